//! A small writer of commented TOML: keys with the comment that says where they came from,
//! tables, and keys written as comments (not set).

use std::fmt::Write as _;

/// Width comments are wrapped at.
const WIDTH: usize = 96;

/// Commented TOML text, written top to bottom.
#[derive(Debug, Default)]
pub struct TomlWriter {
    out: String,
}

impl TomlWriter {
    /// True when the text written so far holds `word`.
    pub fn mentions(&self, word: &str) -> bool {
        self.out.contains(word)
    }

    /// The text written so far.
    pub fn finish(self) -> String {
        self.out
    }

    /// A comment, wrapped, each line starting with `# ` (an empty `text` writes nothing).
    pub fn comment(&mut self, text: &str) {
        for paragraph in text.lines() {
            // A paragraph's indentation stays, and its continuation lines get two more.
            let body = paragraph.trim_start_matches(' ');
            let indent = " ".repeat(paragraph.len() - body.len());
            for (i, line) in wrap(body, WIDTH - 4 - indent.len()).iter().enumerate() {
                let more = if i == 0 || indent.is_empty() {
                    ""
                } else {
                    "  "
                };
                let _ = writeln!(self.out, "# {indent}{more}{line}");
            }
        }
    }

    /// An empty line (never two in a row, never at the start).
    pub fn blank(&mut self) {
        if !self.out.is_empty() && !self.out.ends_with("\n\n") {
            self.out.push('\n');
        }
    }

    /// A table header (`[name]`) after an empty line.
    pub fn table(&mut self, name: &str) {
        self.blank();
        let _ = writeln!(self.out, "[{name}]");
    }

    /// An array-of-tables header (`[[name]]`) after an empty line.
    pub fn array_table(&mut self, name: &str) {
        self.blank();
        let _ = writeln!(self.out, "[[{name}]]");
    }

    /// `key = value`, after `note` as a comment.
    pub fn key(&mut self, key: &str, value: impl Into<toml::Value>, note: &str) {
        self.comment(note);
        let _ = writeln!(self.out, "{key} = {}", render(&value.into()));
    }

    /// `# key = value`: a setting shown but not set, after `note` as a comment.
    pub fn commented_key(&mut self, key: &str, value: impl Into<toml::Value>, note: &str) {
        self.comment(note);
        let _ = writeln!(self.out, "# {key} = {}", render(&value.into()));
    }
}

/// A TOML value as written after `key = `.
pub fn render(value: &toml::Value) -> String {
    match value {
        // Whole numbers without a fraction, as an operator writes thresholds.
        toml::Value::Float(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{f:.0}"),
        v => v.to_string(),
    }
}

/// Splits `text` into lines of at most `width` characters at spaces (a longer word stays whole).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split(' ') {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_tables_and_comments_make_valid_toml() {
        let mut w = TomlWriter::default();
        w.comment("header");
        w.key(
            "networks_file",
            "/etc/networks \"list\"",
            "from networks_list_path",
        );
        w.table("detection.incoming");
        w.key("pps", 20000.0, "");
        w.key("mbps", 0.5, "");
        w.commented_key("flows_per_second", 3500.0, "ban_for_flows = off");
        w.array_table("hostgroup");
        w.key("name", "web", "");
        w.key("networks", vec!["10.0.0.0/24".to_owned()], "");
        let text = w.finish();
        assert!(text.contains("pps = 20000\n"), "{text}");
        assert!(text.contains("# flows_per_second = 3500\n"), "{text}");
        let t: toml::Table = text.parse().expect(&text);
        assert_eq!(t["networks_file"].as_str(), Some("/etc/networks \"list\""));
        assert_eq!(t["detection"]["incoming"]["mbps"].as_float(), Some(0.5));
        assert_eq!(t["hostgroup"][0]["name"].as_str(), Some("web"));
    }

    #[test]
    fn an_indented_comment_keeps_its_indentation() {
        let mut w = TomlWriter::default();
        w.comment(&format!("  key = value: {}", "why ".repeat(40).trim()));
        let text = w.finish();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("#   key = value: why"), "{text}");
        assert!(lines[1].starts_with("#     why"), "{text}");
        assert!(lines.iter().all(|l| l.len() <= WIDTH), "{text}");
    }

    #[test]
    fn long_comments_wrap() {
        let words = "word ".repeat(60);
        for line in wrap(words.trim(), 40) {
            assert!(line.len() <= 40, "{line}");
        }
        assert_eq!(wrap("", 10), vec![String::new()]);
    }
}
