//! Go's `time.ParseDuration`, which Argo uses for `interval` and `initialDelay`.

use std::time::Duration;

/// Why a duration string was refused. The text follows Go's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("time: invalid duration {0:?}")]
    Invalid(String),
    #[error("time: missing unit in duration {0:?}")]
    MissingUnit(String),
    #[error("time: unknown unit {unit:?} in duration {text:?}")]
    UnknownUnit { unit: String, text: String },
    /// Go accepts negative durations; an interval or delay cannot be negative.
    #[error("negative duration {0:?}")]
    Negative(String),
}

/// Parses `300ms`, `1.5h`, `2h45m`, `10s`, `0`. Units: `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let invalid = || DurationError::Invalid(text.to_owned());
    let mut rest = text;
    let mut negative = false;
    if let Some(r) = rest.strip_prefix('-') {
        negative = true;
        rest = r;
    } else if let Some(r) = rest.strip_prefix('+') {
        rest = r;
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_len];
        if number.is_empty() || number == "." {
            return Err(invalid());
        }
        let value: f64 = number.parse().map_err(|_| invalid())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let nanos_per_unit = match unit {
            "" => return Err(DurationError::MissingUnit(text.to_owned())),
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            other => {
                return Err(DurationError::UnknownUnit {
                    unit: other.to_owned(),
                    text: text.to_owned(),
                })
            }
        };
        total += value * nanos_per_unit;
    }
    if negative && total > 0.0 {
        return Err(DurationError::Negative(text.to_owned()));
    }
    Ok(Duration::from_nanos(total.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("2us"), Ok(Duration::from_micros(2)));
    }

    #[test]
    fn refuses_what_go_refuses() {
        assert_eq!(parse("30"), Err(DurationError::MissingUnit("30".into())));
        assert!(matches!(
            parse("5d"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(parse(""), Err(DurationError::Invalid(_))));
        assert!(matches!(parse("s"), Err(DurationError::Invalid(_))));
        assert!(matches!(parse("-5s"), Err(DurationError::Negative(_))));
    }
}
