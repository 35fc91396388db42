//! The deployed bench's output: one table the README can take verbatim
//! (figure, warrant, baseline, ratio with quartiles, target, met?), then
//! the details and the scaling and soak tables, in Markdown.

use super::stats::Spread;

pub struct Row {
    pub figure: String,
    pub warrant: String,
    pub baseline: String,
    /// warrant / baseline, run by run.
    pub ratio: Option<Spread>,
    pub target: String,
    /// None: a figure without a target (reported, not judged).
    pub met: Option<bool>,
}

#[derive(Default)]
pub struct Report {
    pub header: Vec<String>,
    pub rows: Vec<Row>,
    /// Free-form Markdown after the table: per-figure details, the scaling
    /// table, the soak's samples.
    pub sections: Vec<String>,
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut out = String::from("# warrant: deployed-path benchmark\n\n");
        for line in &self.header {
            out.push_str(line);
            out.push('\n');
        }
        out.push_str("\n| figure | warrant | baseline | ratio (quartiles) | target | met? |\n");
        out.push_str("|---|---|---|---|---|---|\n");
        for row in &self.rows {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                row.figure,
                row.warrant,
                row.baseline,
                row.ratio.map_or("—".to_owned(), ratio),
                row.target,
                match row.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "—",
                }
            ));
        }
        for section in &self.sections {
            out.push('\n');
            out.push_str(section);
            if !section.ends_with('\n') {
                out.push('\n');
            }
        }
        out
    }
}

/// "0.82× (0.79–0.85)".
pub fn ratio(s: Spread) -> String {
    format!("{:.2}× ({:.2}–{:.2})", s.median, s.q1, s.q3)
}

/// A median with its quartiles and a unit: "0.412 ms (0.405–0.430)".
pub fn spread(s: Spread, decimals: usize, unit: &str) -> String {
    format!(
        "{:.d$} {unit} ({:.d$}–{:.d$})",
        s.median,
        s.q1,
        s.q3,
        d = decimals
    )
}

/// A signed median with its quartiles: "+0.301 ms (+0.290–+0.322)".
pub fn signed(s: Spread, decimals: usize, unit: &str) -> String {
    format!(
        "{:+.d$} {unit} ({:+.d$}–{:+.d$})",
        s.median,
        s.q1,
        s.q3,
        d = decimals
    )
}

/// "12,345".
pub fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0.0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(-1000.0), "-1,000");
        let s = Spread {
            q1: 0.79,
            median: 0.82,
            q3: 0.851,
        };
        assert_eq!(ratio(s), "0.82× (0.79–0.85)");
        assert_eq!(signed(s, 1, "ms"), "+0.8 ms (+0.8–+0.9)");
    }

    #[test]
    fn the_table_marks_missed_targets() {
        let report = Report {
            header: vec!["commit abc".into()],
            rows: vec![Row {
                figure: "rps".into(),
                warrant: "1".into(),
                baseline: "2".into(),
                ratio: None,
                target: "≥ 1.0×".into(),
                met: Some(false),
            }],
            sections: vec![],
        };
        let md = report.markdown();
        assert!(md.contains("| rps | 1 | 2 | — | ≥ 1.0× | **no** |"), "{md}");
    }
}
