//! Value parsers of numeric options: every number is checked against its valid range (and for
//! floats, finiteness) while the arguments are parsed, so a bad value is a usage error (exit
//! status 2) naming the option and the range, before any work starts.
//!
//! Each function returns a clap value parser: `#[arg(long, value_parser = values::count_in(1, 4096))]`.

use factorvit::session::MAX_THREADS;

/// Largest batch the runtime accepts.
pub const MAX_BATCH: usize = 4096;

/// An integer in `min..=max`.
pub fn count_in(min: usize, max: usize) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        let range = if max == usize::MAX { format!("at least {min}") } else { format!("in {min}..={max}") };
        let v: usize = s.trim().parse().map_err(|_| format!("`{s}` is not a whole number (expected {range})"))?;
        if v < min || v > max {
            return Err(format!("{} is out of range: must be {range}", s.trim()));
        }
        Ok(v)
    }
}

/// An integer of at least `min`.
pub fn count_at_least(min: usize) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync + 'static {
    count_in(min, usize::MAX)
}

/// A thread count: `0` (one per core) up to the runtime's [`MAX_THREADS`].
pub fn threads() -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync + 'static {
    count_in(0, MAX_THREADS)
}

/// A batch size the runtime accepts (`1..=4096`).
pub fn batch() -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync + 'static {
    count_in(1, MAX_BATCH)
}

/// One end of a float range.
#[derive(Debug, Clone, Copy)]
pub enum Bound {
    /// The value itself is allowed.
    Closed(f64),
    /// Only values strictly beyond it are allowed.
    Open(f64),
}

/// A finite float within `lo` and `hi`; the error message states the interval (`[0, 1)`).
pub fn float_in(lo: Bound, hi: Bound) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        let interval = format!(
            "{}{}, {}{}",
            match lo {
                Bound::Closed(_) => "[",
                Bound::Open(_) => "(",
            },
            number(lo),
            number(hi),
            match hi {
                Bound::Closed(_) => "]",
                Bound::Open(_) => ")",
            }
        );
        let v: f64 = s.trim().parse().map_err(|_| format!("`{s}` is not a number (expected one in {interval})"))?;
        let above = match lo {
            Bound::Closed(b) => v >= b,
            Bound::Open(b) => v > b,
        };
        let below = match hi {
            Bound::Closed(b) => v <= b,
            Bound::Open(b) => v < b,
        };
        // NaN fails both comparisons; infinities fail the finite bounds.
        if !(v.is_finite() && above && below) {
            return Err(format!("{} is out of range: must be a finite number in {interval}", s.trim()));
        }
        Ok(v)
    }
}

fn number(b: Bound) -> String {
    let v = match b {
        Bound::Closed(v) | Bound::Open(v) => v,
    };
    if v.is_infinite() {
        if v > 0.0 { "inf" } else { "-inf" }.to_string()
    } else {
        v.to_string()
    }
}

/// A fraction in `[0, 1)`.
pub fn fraction_below_one() -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    float_in(Bound::Closed(0.0), Bound::Open(1.0))
}

/// A finite float of at least 0 (ridge values).
pub fn non_negative() -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    float_in(Bound::Closed(0.0), Bound::Open(f64::INFINITY))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers() {
        let p = count_in(2, 10);
        assert_eq!(p("2"), Ok(2));
        assert_eq!(p("10"), Ok(10));
        assert!(p("1").unwrap_err().contains("in 2..=10"));
        assert!(p("11").is_err());
        assert!(p("-1").unwrap_err().contains("not a whole number"));
        assert!(count_at_least(2)("0").unwrap_err().contains("at least 2"));
    }

    #[test]
    fn floats() {
        let p = fraction_below_one();
        assert_eq!(p("0"), Ok(0.0));
        assert_eq!(p("0.5"), Ok(0.5));
        for bad in ["1", "1.5", "-0.5", "nan", "NaN", "inf", "-inf", "x"] {
            let e = p(bad).unwrap_err();
            assert!(e.contains("[0, 1)"), "{bad}: {e}");
        }
        let r = non_negative();
        assert_eq!(r("1e-4"), Ok(1e-4));
        assert!(r("-1").unwrap_err().contains("[0, inf)"));
        assert!(r("inf").is_err() && r("nan").is_err());
        let w = float_in(Bound::Open(0.0), Bound::Closed(5.0));
        assert!(w("0").unwrap_err().contains("(0, 5]"));
        assert_eq!(w("5"), Ok(5.0));
    }
}
