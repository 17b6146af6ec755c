//! The one set of number formatters for human-readable output (terminal tables, the HTML report,
//! the CLI's result lines, the benchmark and the demo). Byte sizes are binary units everywhere
//! (KiB, MiB, GiB); nothing here goes into a model file or a JSON report.

/// `1234567` → `1,234,567`.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// A byte size in the largest binary unit that keeps the number at least 1, one decimal:
/// `512 B`, `1.5 KiB`, `10.8 MiB`, `2.0 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A byte size in MiB with two decimals (`10.81 MiB`), for columns that compare sizes; takes a
/// float so that per-image averages need no rounding first.
pub fn mib(bytes: f64) -> String {
    format!("{:.2} MiB", bytes / (1024.0 * 1024.0))
}

/// A count with a decimal suffix for axis labels: `950`, `12k`, `1.2M`.
pub fn human_count(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Scientific notation with three significant digits: `1.23e-4`.
pub fn sci(v: f64) -> String {
    format!("{v:.2e}")
}

/// Tick labels of a log axis: `1`, `0.1`, `0.01`, then `1e-3` ...
pub fn format_pow10(v: f64) -> String {
    if v >= 0.01 {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.0e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(123_456), "123,456");
        assert_eq!(thousands(12), "12");
        assert_eq!(thousands(0), "0");
        assert_eq!(human_count(950.0), "950");
        assert_eq!(human_count(12_300.0), "12k");
        assert_eq!(human_count(1_250_000.0), "1.2M");
    }

    #[test]
    fn bytes_are_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(11 * 1024 * 1024), "11.0 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(human_bytes(5 << 40), "5120.0 GiB");
        assert_eq!(mib(1024.0 * 1024.0 * 2.5), "2.50 MiB");
    }

    #[test]
    fn log_ticks() {
        assert_eq!(format_pow10(0.1), "0.1");
        assert_eq!(format_pow10(1.0), "1");
        assert_eq!(format_pow10(1e-4), "1e-4");
        assert_eq!(sci(0.000123), "1.23e-4");
    }
}
