//! Plain-text tables: a header row, columns as wide as their widest cell, numbers aligned right.

/// How a column's cells line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// A table being built.
#[derive(Debug, Clone)]
pub struct Table {
    columns: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

/// Spaces between two columns.
const GAP: usize = 2;

impl Table {
    /// A table with these columns.
    pub fn new(columns: &[(&str, Align)]) -> Self {
        Self {
            columns: columns.iter().map(|(h, a)| ((*h).to_owned(), *a)).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) -> &mut Self {
        let mut cells = cells;
        cells.resize(self.columns.len(), String::new());
        // A cell never breaks the table: line breaks and tabs become spaces.
        for c in &mut cells {
            if c.contains(['\n', '\r', '\t']) {
                *c = c.replace(['\n', '\r', '\t'], " ");
            }
        }
        self.rows.push(cells);
        self
    }

    /// True without rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row after the header, each ending in a newline; the last
    /// column is not padded, so no line ends in spaces.
    pub fn render(&self) -> String {
        let width = |s: &str| s.chars().count();
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| width(&r[i]))
                    .chain(std::iter::once(width(&self.columns[i].0)))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        let header: Vec<String> = self.columns.iter().map(|(h, _)| h.clone()).collect();
        for cells in std::iter::once(&header).chain(self.rows.iter()) {
            let mut line = String::new();
            let last = cells.len().saturating_sub(1);
            for (i, cell) in cells.iter().enumerate() {
                let pad = widths[i] - width(cell);
                match self.columns[i].1 {
                    Align::Right => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(cell);
                    }
                    Align::Left => {
                        line.push_str(cell);
                        if i != last {
                            line.extend(std::iter::repeat_n(' ', pad));
                        }
                    }
                }
                if i != last {
                    line.extend(std::iter::repeat_n(' ', GAP));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell_and_numbers_align_right() {
        let mut t = Table::new(&[
            ("HOST", Align::Left),
            ("PPS", Align::Right),
            ("NOTE", Align::Left),
        ]);
        t.row(vec!["10.0.0.1".into(), "12.3k".into(), "a".into()]);
        t.row(vec!["2001:db8::1".into(), "950".into(), String::new()]);
        t.row(vec!["x".into(), "1.20M".into(), "line\nbreak".into()]);
        assert_eq!(
            t.render(),
            "HOST           PPS  NOTE\n\
             10.0.0.1     12.3k  a\n\
             2001:db8::1    950\n\
             x            1.20M  line break\n"
        );
    }

    #[test]
    fn a_table_without_rows_is_its_header() {
        let t = Table::new(&[("A", Align::Left), ("B", Align::Right)]);
        assert!(t.is_empty());
        assert_eq!(t.render(), "A  B\n");
    }
}
