//! The file system itself, through real system calls on a real mount: what a cut keeps and
//! what it forgets.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read as _, Write as _};
use std::os::unix::fs::{
    DirBuilderExt as _, FileExt as _, OpenOptionsExt as _, PermissionsExt as _,
};
use std::path::Path;

use super::{Image, Mount, MountPoint, PAGE, available, required};

/// A mount on a fresh temporary directory, or `None` (after printing `SKIPPED` and the
/// reason) where FUSE is not available.
fn mounted(image: Image) -> Option<(MountPoint, Mount)> {
    if let Err(reason) = available() {
        assert!(!required(), "CI must run the FUSE tests: {reason}");
        println!("SKIPPED: {reason}");
        return None;
    }
    let dir = MountPoint::new().expect("mount point");
    let m = Mount::new(dir.path(), image).expect("mount forgetfs");
    Some((dir, m))
}

/// Cuts the power, unmounts, mounts what survived on the same directory.
fn cut_and_remount(dir: &Path, m: Mount, torn: Option<u64>) -> Mount {
    let survived = m.cut_power(torn);
    m.unmount();
    Mount::new(dir, survived).expect("mount again")
}

fn sync_dir(p: &Path) {
    File::open(p).and_then(|f| f.sync_all()).expect("fsync dir");
}

fn read(p: &Path) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    File::open(p)?.read_to_end(&mut v)?;
    Ok(v)
}

#[test]
fn written_and_not_synced_is_gone_after_a_cut() {
    let Some((dir, m)) = mounted(Image::for_this_user()) else {
        return;
    };
    let p = dir.path().join("f");
    File::create(&p).expect("create").sync_all().expect("fsync");
    sync_dir(dir.path());
    let mut f = OpenOptions::new().append(true).open(&p).expect("open");
    f.write_all(b"lost").expect("write");
    assert_eq!(read(&p).expect("read before the cut"), b"lost");
    let m = cut_and_remount(dir.path(), m, None);
    assert_eq!(read(&p).expect("read after"), b"");
    m.unmount();
}

#[test]
fn written_and_fdatasynced_survives_a_cut() {
    let Some((dir, m)) = mounted(Image::for_this_user()) else {
        return;
    };
    let p = dir.path().join("f");
    let f = OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc_flags())
        .open(&p)
        .expect("create");
    f.write_all_at(b"kept", 0).expect("pwrite");
    f.sync_data().expect("fdatasync");
    sync_dir(dir.path());
    f.write_all_at(b"-and-lost", 4).expect("pwrite");
    let m = cut_and_remount(dir.path(), m, None);
    assert_eq!(read(&p).expect("read after"), b"kept");
    let mode = std::fs::metadata(&p)
        .expect("metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    m.unmount();
}

/// `O_NOFOLLOW | O_NONBLOCK`, as the spool opens its files.
fn libc_flags() -> i32 {
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    i32::try_from(flags.bits()).unwrap_or(0)
}

#[test]
fn a_new_file_synced_but_not_its_directory_is_gone_after_a_cut() {
    let Some((dir, m)) = mounted(Image::for_this_user()) else {
        return;
    };
    let p = dir.path().join("new");
    let mut f = File::create(&p).expect("create");
    f.write_all(b"data").expect("write");
    f.sync_all().expect("fsync the file only");
    let m = cut_and_remount(dir.path(), m, None);
    assert_eq!(
        read(&p).map_err(|e| e.kind()),
        Err(ErrorKind::NotFound),
        "the directory entry was never made durable"
    );
    m.unmount();
}

#[test]
fn a_new_directory_needs_its_parent_synced() {
    let Some((dir, m)) = mounted(Image::for_this_user()) else {
        return;
    };
    let lane = dir.path().join("lane-0");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&lane)
        .expect("mkdir");
    let seg = lane.join("seg");
    let mut f = File::create(&seg).expect("create");
    f.write_all(b"data").expect("write");
    f.sync_all().expect("fsync");
    sync_dir(&lane);
    // The lane directory itself is not in its parent durably yet: all of it goes.
    let m = cut_and_remount(dir.path(), m, None);
    assert!(
        !lane.exists(),
        "lane directory survived without its parent's fsync"
    );

    // Same again, with the parent synced: everything stays, with its permissions.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&lane)
        .expect("mkdir");
    sync_dir(dir.path());
    let mut f = File::create(&seg).expect("create");
    f.write_all(b"data").expect("write");
    f.sync_all().expect("fsync");
    sync_dir(&lane);
    let m = cut_and_remount(dir.path(), m, None);
    assert_eq!(read(&seg).expect("read"), b"data");
    let mode = std::fs::metadata(&lane)
        .expect("metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    m.unmount();
}

#[test]
fn a_rename_without_a_directory_fsync_is_undone_by_a_cut() {
    let Some((dir, m)) = mounted(Image::for_this_user()) else {
        return;
    };
    let (a, b) = (dir.path().join("cursor.tmp"), dir.path().join("cursor"));
    std::fs::write(&b, b"old").expect("write");
    File::open(&b).and_then(|f| f.sync_all()).expect("fsync");
    let mut f = File::create(&a).expect("create");
    f.write_all(b"new").expect("write");
    f.sync_all().expect("fsync");
    sync_dir(dir.path());
    std::fs::rename(&a, &b).expect("rename");
    assert_eq!(read(&b).expect("read"), b"new");
    let m = cut_and_remount(dir.path(), m, None);
    assert_eq!(read(&b).expect("old name"), b"old");
    assert_eq!(read(&a).expect("temporary name"), b"new");

    // With the directory synced, the rename holds.
    std::fs::rename(&a, &b).expect("rename");
    sync_dir(dir.path());
    let m = cut_and_remount(dir.path(), m, None);
    assert_eq!(read(&b).expect("read"), b"new");
    assert!(!a.exists());
    m.unmount();
}

#[test]
fn an_unlink_without_a_directory_fsync_is_undone_by_a_cut() {
    let Some((dir, m)) = mounted(Image::for_this_user()) else {
        return;
    };
    let p = dir.path().join("seg");
    let mut f = File::create(&p).expect("create");
    f.write_all(b"x").expect("write");
    f.sync_all().expect("fsync");
    drop(f);
    sync_dir(dir.path());
    std::fs::remove_file(&p).expect("unlink");
    let m = cut_and_remount(dir.path(), m, None);
    assert_eq!(read(&p).expect("back"), b"x");
    std::fs::remove_file(&p).expect("unlink");
    sync_dir(dir.path());
    let m = cut_and_remount(dir.path(), m, None);
    assert!(!p.exists());
    m.unmount();
}

#[test]
fn truncation_and_set_len_are_durable_only_after_fsync() {
    let Some((dir, m)) = mounted(Image::for_this_user()) else {
        return;
    };
    let p = dir.path().join("f");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&p)
        .expect("create");
    f.write_all_at(&[7u8; 3 * PAGE as usize], 0).expect("write");
    f.sync_data().expect("fdatasync");
    sync_dir(dir.path());
    // Cut to 100 bytes and grown again with zeros: the old bytes must not come back.
    f.set_len(100).expect("truncate");
    f.set_len(2 * PAGE).expect("extend");
    f.sync_data().expect("fdatasync");
    f.set_len(10).expect("truncate, not synced");
    assert_eq!(f.metadata().expect("stat").len(), 10);
    let m = cut_and_remount(dir.path(), m, None);
    let data = read(&p).expect("read");
    assert_eq!(data.len(), 2 * PAGE as usize);
    assert!(data[..100].iter().all(|&b| b == 7));
    assert!(
        data[100..].iter().all(|&b| b == 0),
        "truncated bytes came back"
    );
    m.unmount();
}

#[test]
fn after_a_cut_every_request_fails_until_remounted() {
    let Some((dir, m)) = mounted(Image::for_this_user()) else {
        return;
    };
    let p = dir.path().join("f");
    let f = File::create(&p).expect("create");
    let _ = m.cut_power(None);
    assert!(m.is_cut());
    let err = f.write_all_at(b"x", 0).expect_err("write after the cut");
    assert_eq!(err.raw_os_error(), Some(5), "EIO: {err}");
    assert!(f.sync_data().is_err());
    assert!(std::fs::read_dir(dir.path()).is_err());
    assert!(m.refused_since_cut() >= 3);
    drop(f);
    m.unmount();
}

#[test]
fn flock_excludes_across_open_files_and_readdir_and_statvfs_work() {
    let Some((dir, m)) = mounted(Image::for_this_user()) else {
        return;
    };
    let sub = dir.path().join("lane-3");
    std::fs::create_dir(&sub).expect("mkdir");
    let p = sub.join("lock");
    let a = File::create(&p).expect("create");
    let b = File::open(&p).expect("open again");
    a.try_lock().expect("first lock");
    assert!(
        matches!(b.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
        "a second open file description must not get the lock"
    );
    drop(a);
    b.try_lock().expect("free once the holder closed it");
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["lane-3"]);
    let st = rustix::fs::statvfs(dir.path()).expect("statvfs");
    assert!(st.f_bavail > 0 && st.f_bsize > 0);
    drop(b);
    m.unmount();
}

#[test]
fn a_torn_cut_keeps_whole_pages_from_the_unsynced_writes_and_is_reproducible() {
    let Some((dir, m)) = mounted(Image::for_this_user()) else {
        return;
    };
    let p = dir.path().join("f");
    let f = File::create(&p).expect("create");
    f.sync_all().expect("fsync");
    sync_dir(dir.path());
    let pages = 16usize;
    for i in 0..pages {
        f.write_all_at(&[i as u8 + 1; PAGE as usize], i as u64 * PAGE)
            .expect("write");
    }
    let one = m.snapshot().after_power_cut(Some(7));
    let two = m.snapshot().after_power_cut(Some(7));
    assert_eq!(
        one.read_file("f"),
        two.read_file("f"),
        "same seed, same cut"
    );
    drop(f);
    let survived = m.cut_power(Some(7));
    m.unmount();
    let data = survived.read_file("f").expect("the file was durable");
    assert_eq!(Some(&data), one.read_file("f").as_ref());
    // Every page is whole: written or zeros (the file's length was durable or current).
    let mut kept = 0;
    for (i, page) in data.chunks(PAGE as usize).enumerate() {
        let v = page[0];
        assert!(page.iter().all(|&b| b == v), "page {i} torn inside");
        assert!(
            v == 0 || v == i as u8 + 1,
            "page {i} holds another page's data"
        );
        kept += usize::from(v != 0);
    }
    assert!(kept < pages || data.len() == pages * PAGE as usize);
    let m = Mount::new(dir.path(), survived).expect("mount again");
    m.unmount();
}

#[test]
fn an_image_written_to_a_directory_loads_back_whole_and_durable() {
    let Some((dir, m)) = mounted(Image::for_this_user()) else {
        return;
    };
    let lane = dir.path().join("lane-0");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&lane)
        .expect("mkdir");
    std::fs::write(lane.join("seg"), b"records").expect("write");
    let kept = tempfile_dir();
    m.snapshot().write_to(&kept).expect("write out");
    m.unmount();
    let loaded = Image::load(&kept).expect("load");
    let _ = std::fs::remove_dir_all(&kept);
    // Loaded state is durable: a cut right away keeps all of it.
    let after = loaded.after_power_cut(None);
    assert_eq!(
        after.read_file("lane-0/seg").as_deref(),
        Some(&b"records"[..])
    );
    assert_eq!(after.list_dir(""), Some(vec!["lane-0".to_owned()]));
    let m = Mount::new(dir.path(), after).expect("mount the loaded image");
    let mode = std::fs::metadata(&lane).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    m.unmount();
}

/// A fresh directory outside any mount.
fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "outlast-forgetfs-image-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temporary directory");
    d
}
