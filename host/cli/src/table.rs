//! Tables for people: columns sized to their contents, no borders, as
//! `docker ps` and `kubectl get` print them.

use std::fmt;

use comfy_table::presets::NOTHING;
use comfy_table::{CellAlignment, ContentArrangement};

pub struct Table(comfy_table::Table);

impl Table {
    pub fn new<const N: usize>(header: [&str; N]) -> Self {
        let mut table = comfy_table::Table::new();
        table
            .load_style(NOTHING)
            .set_content_arrangement(ContentArrangement::Disabled)
            .set_header(header);
        Self(table)
    }

    /// Right-aligns the columns at these indexes (numbers).
    pub fn align_right(&mut self, columns: &[usize]) {
        for &i in columns {
            if let Some(column) = self.0.column_mut(i) {
                column.set_cell_alignment(CellAlignment::Right);
            }
        }
    }

    pub fn row<S: ToString, const N: usize>(&mut self, cells: [S; N]) {
        self.0.add_row(cells.map(|c| c.to_string()));
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in self.0.lines() {
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}
