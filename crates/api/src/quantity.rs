//! Kubernetes byte quantities (`4Ki`, `10Gi`, `1e6`, `500M`) to a number of bytes.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// A quantity that is not a number of bytes, with what is wrong with it.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{value:?} is not a byte quantity ({why}); write e.g. 4096, 4Ki, 10Mi or 1G")]
pub struct QuantityError {
    value: String,
    why: &'static str,
}

/// The number of bytes a quantity stands for, rounded up to a whole byte.
pub fn parse_bytes(q: &Quantity) -> Result<u64, QuantityError> {
    let value = q.0.trim();
    let err = |why| QuantityError {
        value: value.to_string(),
        why,
    };
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(split);
    if number.is_empty() {
        return Err(err("it has no number"));
    }
    let number: f64 = number
        .parse()
        .map_err(|_| err("its number does not parse"))?;
    let scale: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        s if s.starts_with(['e', 'E']) => {
            let exp: i32 = s[1..]
                .parse()
                .map_err(|_| err("its exponent does not parse"))?;
            10f64.powi(exp)
        }
        "m" => return Err(err("milli-units are not whole bytes")),
        _ => return Err(err("unknown suffix")),
    };
    let bytes = (number * scale).ceil();
    if !(0.0..=u64::MAX as f64).contains(&bytes) {
        return Err(err("it is out of range"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity(s.into())
    }

    #[test]
    fn binary_decimal_and_plain() {
        assert_eq!(parse_bytes(&q("4Ki")), Ok(4096));
        assert_eq!(parse_bytes(&q("1.5Gi")), Ok(1_610_612_736));
        assert_eq!(parse_bytes(&q("500M")), Ok(500_000_000));
        assert_eq!(parse_bytes(&q("1e3")), Ok(1000));
        assert_eq!(parse_bytes(&q("123")), Ok(123));
    }

    #[test]
    fn refusals_name_the_value_and_the_fix() {
        let e = parse_bytes(&q("10Qi")).unwrap_err().to_string();
        assert!(
            e.contains("\"10Qi\"") && e.contains("unknown suffix") && e.contains("4Ki"),
            "{e}"
        );
        assert!(parse_bytes(&q("Mi")).is_err());
        assert!(parse_bytes(&q("100m")).is_err());
    }
}
