//! Tables for people: columns sized to their contents, no borders, as
//! `docker ps` and `kubectl get` print them; and how a listing command
//! prints, a table or `--json`.

use std::fmt;

use comfy_table::presets::NOTHING;
use comfy_table::{CellAlignment, ContentArrangement};
use serde::Serialize;

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

/// Prints a listing as its command's `--json` asks: each row's `as_json`
/// in one pretty JSON array (`[]` when there are none); else `nothing` when
/// there are no rows, else what `table` makes of them.
pub fn print_listing<'a, R, J: Serialize, T: fmt::Display>(
    json: bool,
    rows: &'a [R],
    as_json: impl Fn(&'a R) -> J,
    nothing: &str,
    table: impl FnOnce(&'a [R]) -> T,
) -> anyhow::Result<()> {
    if json {
        let rows: Vec<J> = rows.iter().map(as_json).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if rows.is_empty() {
        println!("{nothing}");
    } else {
        print!("{}", table(rows));
    }
    Ok(())
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in self.0.lines() {
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}
