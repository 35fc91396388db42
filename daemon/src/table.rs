//! Aligned text tables and number formats for the commands' human output
//! (`warrant status`, `warrant audit`, the audit health sentence that
//! `warrant doctor` prints too): every column is as wide as its
//! widest cell, whatever the values, so a long name never runs into the
//! next column. Widths count characters (the values are names, numbers and
//! times; no double-width text is expected).

/// Columns separated by two spaces, indented by two.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

const INDENT: &str = "  ";
const GAP: &str = "  ";

impl Table {
    /// A table whose first row is `headers`.
    pub fn with_headers(headers: &[&str]) -> Table {
        Table {
            rows: vec![headers.iter().map(|h| (*h).to_owned()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Whether only the header row is there.
    pub fn is_empty(&self) -> bool {
        self.rows.len() <= 1
    }

    /// The rows, one per line, each ending with a newline; the last column
    /// is not padded (no trailing spaces).
    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; columns];
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::from(INDENT);
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str(GAP);
                }
                line.push_str(cell);
                if i + 1 < row.len() {
                    let pad = widths[i].saturating_sub(cell.chars().count());
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `n` with thousands separators: 1234567 -> "1,234,567".
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Micro-USD as dollars: cents, or four decimals under a cent.
pub fn dollars(micro_usd: u64) -> String {
    usd(micro_usd as f64 / 1e6)
}

/// Dollars: cents, or four decimals under a cent (a single request's cost).
pub fn usd(value: f64) -> String {
    if value > 0.0 && value < 0.01 {
        format!("${value:.4}")
    } else {
        format!("${value:.2}")
    }
}

/// A span of seconds in words: "41 s", "12 min", "3 h 5 min", "2 d 4 h".
pub fn span(secs: u64) -> String {
    const MIN: u64 = 60;
    const HOUR: u64 = 3600;
    const DAY: u64 = 86_400;
    match secs {
        s if s < MIN => format!("{s} s"),
        s if s < HOUR => format!("{} min", s / MIN),
        s if s < DAY => match (s % HOUR) / MIN {
            0 => format!("{} h", s / HOUR),
            m => format!("{} h {m} min", s / HOUR),
        },
        s => match (s % DAY) / HOUR {
            0 => format!("{} d", s / DAY),
            h => format!("{} d {h} h", s / DAY),
        },
    }
}

/// `at` relative to `now`: "in 12 min", "3 h ago", "now".
pub fn relative(at: jiff::Timestamp, now: jiff::Timestamp) -> String {
    let secs = at.as_second() - now.as_second();
    match secs {
        0 => "now".to_owned(),
        s if s > 0 => format!("in {}", span(s.unsigned_abs())),
        s => format!("{} ago", span(s.unsigned_abs())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_fit_their_widest_cell_whatever_its_length() {
        let mut table = Table::with_headers(&["CLAIM", "VALUE"]);
        let long = "host_key_ed25519".to_owned() + &"x".repeat(40);
        table.row(vec![long.clone(), "3862abcd".into()]);
        table.row(vec!["region".into(), "us-east-1".into()]);
        let text = table.render();
        let lines: Vec<&str> = text.lines().collect();
        // Every value starts in the same column, two spaces after the
        // longest claim name.
        let column = 2 + long.len() + 2;
        assert_eq!(lines[1].find("3862abcd"), Some(column), "{text}");
        assert_eq!(lines[2].find("us-east-1"), Some(column), "{text}");
        assert_eq!(lines[0].find("VALUE"), Some(column), "{text}");
        assert!(lines.iter().all(|l| !l.ends_with(' ')));
    }

    #[test]
    fn numbers_money_and_spans_read_as_words() {
        assert_eq!(count(0), "0");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(count(123), "123");
        assert_eq!(dollars(12_345_678), "$12.35");
        assert_eq!(dollars(1_200), "$0.0012");
        assert_eq!(dollars(0), "$0.00");
        assert_eq!(span(41), "41 s");
        assert_eq!(span(12 * 60 + 5), "12 min");
        assert_eq!(span(3 * 3600 + 5 * 60), "3 h 5 min");
        assert_eq!(span(2 * 86_400 + 4 * 3600 + 9), "2 d 4 h");
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap_or_default();
        let later = jiff::Timestamp::from_second(1_800_000_090).unwrap_or_default();
        assert_eq!(relative(later, now), "in 1 min");
        assert_eq!(relative(now, later), "1 min ago");
        assert_eq!(relative(now, now), "now");
    }
}
