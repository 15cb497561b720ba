//! What the readers of `OUTLAST_*` variables share, the client's (`env`) and the HTTP
//! exporter's (`http`): the row that declares a variable for the documentation, and the
//! parsers of values in the workspace's grammar whose errors name the variable.

use std::time::Duration;

use outlast_core::{ConfigError, units};

/// One client setting that has an environment variable: the variable, the builder parameter
/// it sets, and how the documentation shows it ([`SETTINGS`](super::SETTINGS) lists them all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Setting {
    /// The environment variable.
    pub var: &'static str,
    /// The [`ClientBuilder`](crate::ClientBuilder) parameter it sets (its method's name).
    pub param: &'static str,
    /// How the value is written (Markdown, as in the documentation's "format" column).
    pub format: &'static str,
    /// The default (Markdown, as in the documentation's "default" column): a value in the
    /// setting's own format, optionally followed by a remark in parentheses.
    pub default: &'static str,
}

/// Parses a duration in the workspace's grammar ([`outlast_core::units::parse_duration`]).
///
/// # Errors
///
/// [`ConfigError::Invalid`] naming `var`.
pub(crate) fn parse_duration(var: &'static str, value: &str) -> Result<Duration, ConfigError> {
    units::parse_duration(value).map_err(|e| ConfigError::invalid(var, e.to_string()))
}

/// Parses a size in the workspace's grammar ([`outlast_core::units::parse_size`]).
///
/// # Errors
///
/// [`ConfigError::Invalid`] naming `var`.
pub(crate) fn parse_size(var: &'static str, value: &str) -> Result<u64, ConfigError> {
    units::parse_size(value).map_err(|e| ConfigError::invalid(var, e.to_string()))
}
