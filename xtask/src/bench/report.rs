//! The bench report. Each scenario hands back a [`Section`]: its tables
//! are printed as soon as it finishes, and at the end everything goes to
//! `target/bench/report.md` (tables and charts), `report.json` (every
//! sample) and one SVG bar chart per [`Chart`].

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use serde_json::{Value, json};

/// A table: the first column is left-aligned, the others right-aligned.
pub struct Table {
    pub title: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: impl Into<String>, headers: &[&str]) -> Self {
        Self {
            title: title.into(),
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn widths(&self) -> Vec<usize> {
        let mut w: Vec<usize> = self.headers.iter().map(String::len).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(slot) = w.get_mut(i) {
                    *slot = (*slot).max(cell.len());
                }
            }
        }
        w
    }

    /// The table as aligned text for the terminal.
    pub fn text(&self) -> String {
        let w = self.widths();
        let line = |cells: &[String]| {
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let width = w.get(i).copied().unwrap_or(0);
                    if i == 0 {
                        format!("{c:<width$}")
                    } else {
                        format!("{c:>width$}")
                    }
                })
                .collect::<Vec<_>>()
                .join("  ")
        };
        let mut out = format!("{}\n{}\n", self.title, line(&self.headers));
        for row in &self.rows {
            out.push_str(&line(row));
            out.push('\n');
        }
        out
    }

    fn markdown(&self) -> String {
        let mut out = format!("**{}**\n\n| {} |\n|", self.title, self.headers.join(" | "));
        for i in 0..self.headers.len() {
            out.push_str(if i == 0 { " --- |" } else { " ---: |" });
        }
        out.push('\n');
        for row in &self.rows {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        out
    }
}

/// A grouped bar chart: one group per label, one bar per series.
pub struct Chart {
    /// File name without `.svg`.
    pub file: String,
    pub title: String,
    pub unit: String,
    pub groups: Vec<(String, Vec<(String, f64)>)>,
}

const PALETTE: [&str; 5] = ["#264653", "#2a9d8f", "#e76f51", "#8d99ae", "#e9c46a"];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn short(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

impl Chart {
    pub fn svg(&self) -> String {
        let (width, height) = (760.0, 380.0);
        let (left, right, top, bottom) = (70.0, 20.0, 50.0, 60.0);
        let plot_w = width - left - right;
        let plot_h = height - top - bottom;
        let mut series: Vec<&str> = Vec::new();
        for (_, bars) in &self.groups {
            for (name, _) in bars {
                if !series.contains(&name.as_str()) {
                    series.push(name);
                }
            }
        }
        let max = self
            .groups
            .iter()
            .flat_map(|(_, bars)| bars.iter().map(|(_, v)| *v))
            .fold(0.0_f64, f64::max)
            .max(f64::MIN_POSITIVE);
        let color = |name: &str| {
            let i = series.iter().position(|s| *s == name).unwrap_or(0);
            PALETTE[i % PALETTE.len()]
        };
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
             font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"{left}\" y=\"24\" font-size=\"15\" font-weight=\"bold\">{}</text>\n",
            escape(&self.title)
        );
        for tick in 0..=4 {
            let v = max * f64::from(tick) / 4.0;
            let y = top + plot_h - plot_h * f64::from(tick) / 4.0;
            let _ = writeln!(
                svg,
                "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
                 <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                left + plot_w,
                left - 6.0,
                y + 4.0,
                short(v)
            );
        }
        let _ = writeln!(
            svg,
            "<text x=\"14\" y=\"{:.1}\" transform=\"rotate(-90 14 {:.1})\" text-anchor=\"middle\">{}</text>",
            top + plot_h / 2.0,
            top + plot_h / 2.0,
            escape(&self.unit)
        );
        let group_w = plot_w / self.groups.len().max(1) as f64;
        for (g, (label, bars)) in self.groups.iter().enumerate() {
            let x0 = left + group_w * g as f64;
            let bar_w = (group_w * 0.8) / bars.len().max(1) as f64;
            for (b, (name, v)) in bars.iter().enumerate() {
                let h = plot_h * v / max;
                let x = x0 + group_w * 0.1 + bar_w * b as f64;
                let y = top + plot_h - h;
                let _ = writeln!(
                    svg,
                    "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\">\
                     <title>{}: {}</title></rect>\
                     <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{}</text>",
                    bar_w * 0.92,
                    color(name),
                    escape(name),
                    short(*v),
                    x + bar_w * 0.46,
                    y - 3.0,
                    short(*v)
                );
            }
            let _ = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                x0 + group_w / 2.0,
                top + plot_h + 18.0,
                escape(label)
            );
        }
        for (i, name) in series.iter().enumerate() {
            let x = left + 110.0 * i as f64;
            let y = height - 18.0;
            let _ = writeln!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{}\"/>\
                 <text x=\"{:.1}\" y=\"{y:.1}\">{}</text>",
                y - 10.0,
                color(name),
                x + 16.0,
                escape(name)
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}

/// What one scenario measured.
pub struct Section {
    pub scenario: String,
    /// How it was measured, one paragraph.
    pub method: String,
    pub tables: Vec<Table>,
    pub charts: Vec<Chart>,
    pub samples: Value,
}

/// All sections of one `cargo xtask bench` run.
pub struct Report {
    machine: String,
    sections: Vec<Section>,
}

impl Report {
    pub fn new(machine: String) -> Self {
        Self {
            machine,
            sections: Vec::new(),
        }
    }

    /// Prints the section's tables and keeps it for the files.
    pub fn add(&mut self, section: Section) {
        println!();
        for t in &section.tables {
            println!("{}", t.text());
        }
        self.sections.push(section);
    }

    /// Writes report.md, report.json and the charts into `out_dir`.
    pub fn write(&self, out_dir: &Path, versions: &[(&str, String)]) -> anyhow::Result<()> {
        let listed: Vec<String> = versions
            .iter()
            .map(|(what, line)| format!("{what}: `{line}`"))
            .collect();
        let mut md = format!(
            "# ferry benchmark report\n\nMachine: {}.\n\nVersions: {}.\n\nEvery scenario runs its variants \
             side by side in one invocation, interleaved (A B C A B C ...), and reports \
             medians with [min-max] over the rounds. Load generator and server are pinned to \
             different CPUs. Ratios above 1.00x favour ferry unless the column says otherwise.\n",
            self.machine,
            listed.join("; ")
        );
        let mut samples = BTreeMap::new();
        for s in &self.sections {
            let _ = write!(md, "\n## {}\n\n{}\n\n", s.scenario, s.method);
            for t in &s.tables {
                md.push_str(&t.markdown());
                md.push('\n');
            }
            for c in &s.charts {
                let file = format!("{}.svg", c.file);
                std::fs::write(out_dir.join(&file), c.svg())?;
                let _ = writeln!(md, "![{}]({file})\n", c.title);
            }
            samples.insert(s.scenario.clone(), s.samples.clone());
        }
        std::fs::write(out_dir.join("report.md"), md)?;
        std::fs::write(
            out_dir.join("report.json"),
            serde_json::to_vec_pretty(&json!({
                "machine": self.machine,
                "versions": versions.iter().cloned().collect::<BTreeMap<_, _>>(),
                "scenarios": samples,
            }))?,
        )?;
        println!(
            "report: {} (samples: {})",
            out_dir.join("report.md").display(),
            out_dir.join("report.json").display()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_render_as_markdown() {
        let mut t = Table::new("demo", &["variant", "req/s"]);
        t.row(vec!["ferry".into(), "12345".into()]);
        t.row(vec!["host".into(), "9".into()]);
        assert_eq!(
            t.text(),
            "demo\nvariant  req/s\nferry    12345\nhost         9\n"
        );
        assert_eq!(
            t.markdown(),
            "**demo**\n\n| variant | req/s |\n| --- | ---: |\n| ferry | 12345 |\n| host | 9 |\n"
        );
    }

    #[test]
    fn charts_are_svg_with_a_bar_per_value() {
        let c = Chart {
            file: "x".into(),
            title: "a <b>".into(),
            unit: "req/s".into(),
            groups: vec![
                (
                    "c=1".into(),
                    vec![("host".into(), 10.0), ("ferry".into(), 5.0)],
                ),
                (
                    "c=50".into(),
                    vec![("host".into(), 20.0), ("ferry".into(), 0.0)],
                ),
            ],
        };
        let svg = c.svg();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<title>").count(), 4);
        assert!(svg.contains("a &lt;b&gt;"));
    }
}
