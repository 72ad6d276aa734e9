//! Reading configuration from the environment.
//!
//! Every variable has a default in code (or is required), is parsed once at
//! start, and a bad value stops the service with a message naming the
//! variable. Secrets come from `NAME` or from a file named by `NAME_FILE`
//! (for container secret mounts), and are wrapped in [`SecretString`] so
//! they never reach a log.

use std::fmt::Display;
use std::str::FromStr;

use secrecy::SecretString;

/// A configuration variable that is missing or malformed.
#[derive(Debug, thiserror::Error)]
#[error("configuration variable {name}: {problem}")]
pub struct ConfigError {
    pub name: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(name: &str, problem: impl Display) -> Self {
        Self { name: name.to_owned(), problem: problem.to_string() }
    }
}

/// The value of `name`, or `default` when it is unset or empty.
///
/// # Errors
/// When the variable is set but does not parse.
pub fn var_or<T>(name: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    Ok(var_optional(name)?.unwrap_or(default))
}

/// The value of `name`, or `None` when it is unset or empty.
///
/// # Errors
/// When the variable is set but does not parse.
pub fn var_optional<T>(name: &str) -> Result<Option<T>, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    match std::env::var(name) {
        Ok(text) if !text.trim().is_empty() => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|error| ConfigError::new(name, format!("cannot parse {text:?}: {error}"))),
        Ok(_) | Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::new(name, "is not UTF-8")),
    }
}

/// A secret from `name`, or from the file named by `{name}_FILE`.
///
/// # Errors
/// When both are set, or the file cannot be read.
pub fn secret_optional(name: &str) -> Result<Option<SecretString>, ConfigError> {
    let file_variable = format!("{name}_FILE");
    let direct: Option<String> = var_optional(name)?;
    let file: Option<String> = var_optional(&file_variable)?;
    match (direct, file) {
        (Some(_), Some(_)) => Err(ConfigError::new(name, format!("set either {name} or {file_variable}, not both"))),
        (Some(value), None) => Ok(Some(SecretString::from(value))),
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map(|contents| Some(SecretString::from(contents.trim_end().to_owned())))
            .map_err(|error| ConfigError::new(&file_variable, format!("cannot read {path}: {error}"))),
        (None, None) => Ok(None),
    }
}

/// The value of `name` (or `default`), checked against its documented range:
/// the usual shape of a limit.
///
/// # Errors
/// When the variable does not parse or is out of range.
pub fn limit<T>(name: &str, default: T, range: std::ops::RangeInclusive<T>) -> Result<T, ConfigError>
where
    T: FromStr + PartialOrd + Display + Copy,
    T::Err: Display,
{
    check_range(name, var_or(name, default)?, range)
}

/// Checks that a limit is within its documented range.
///
/// # Errors
/// When `value` is outside `range`.
pub fn check_range<T>(name: &str, value: T, range: std::ops::RangeInclusive<T>) -> Result<T, ConfigError>
where
    T: PartialOrd + Display + Copy,
{
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::new(name, format!("{value} is outside {}..={}", range.start(), range.end())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_outside_its_range_names_the_variable() {
        let error = check_range("LEDGERLINE_BATCH_SIZE_MAX", 0_u32, 1..=10_000).expect_err("0 is out");
        assert_eq!(error.to_string(), "configuration variable LEDGERLINE_BATCH_SIZE_MAX: 0 is outside 1..=10000");
    }

    #[test]
    fn an_unset_variable_falls_back_to_its_default() {
        let value: u32 = var_or("LEDGERLINE_TEST_SURELY_UNSET_VARIABLE", 7).expect("default");
        assert_eq!(value, 7);
    }
}
