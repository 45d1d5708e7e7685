//! The tables of docs/clickhouse/schema.sql (the file the agent runs, so the documented
//! schema is the tested one), and retention by whole partitions: ClickHouse 18.16 has no
//! TTL, so the agent drops the partitions that are entirely older than the configured days.

use super::client::{Client, Failure};

/// The shipped schema.
pub const SCHEMA_SQL: &str = include_str!("../../../../docs/clickhouse/schema.sql");

/// Tables partitioned by day, kept `retention_days`.
pub const DAILY_TABLES: [&str; 2] = ["hosts", "flows"];

/// Tables partitioned by month, kept `rollup_retention_days`.
pub const MONTHLY_TABLES: [&str; 3] = ["hosts_1m", "attacks", "mitigations"];

/// The statements of [`SCHEMA_SQL`]: comments dropped, split at a `;` that ends a line.
pub fn statements() -> Vec<String> {
    let text: String = SCHEMA_SQL
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .map(|l| format!("{l}\n"))
        .collect();
    text.split(";\n")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Creates the database and every table that is missing.
pub fn create(client: &Client, database: &str) -> Result<(), Failure> {
    client.execute(&format!("CREATE DATABASE IF NOT EXISTS {database}"), false)?;
    for statement in statements() {
        client.execute(&statement, true)?;
    }
    Ok(())
}

/// Drops the partitions older than the retention; returns `table partition` of each.
pub fn apply_retention(
    client: &Client,
    database: &str,
    retention_days: u32,
    rollup_retention_days: u32,
) -> Result<Vec<String>, Failure> {
    let mut dropped = Vec::new();
    // One query per kind of partition key: ClickHouse evaluates every condition on every
    // row, and toDate() of a month number would fail.
    let kinds = [
        (
            &DAILY_TABLES[..],
            retention_days,
            "toDate(partition) < today() - {days}",
        ),
        (
            &MONTHLY_TABLES[..],
            rollup_retention_days,
            "toUInt32(partition) < toYYYYMM(today() - {days})",
        ),
    ];
    for (tables, days, older) in kinds {
        if days == 0 {
            continue;
        }
        let list = tables
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT table, partition FROM system.parts WHERE database = '{database}' \
             AND active AND table IN ({list}) AND {} GROUP BY table, partition \
             FORMAT TabSeparated",
            older.replace("{days}", &days.to_string())
        );
        for line in client.execute(&sql, true)?.lines() {
            let Some((table, partition)) = line.split_once('\t') else {
                continue;
            };
            // Only names and values this schema makes; anything else is left alone.
            let known = tables.contains(&table);
            let plain =
                !partition.is_empty() && partition.chars().all(|c| c.is_ascii_digit() || c == '-');
            if !known || !plain {
                continue;
            }
            let value = if partition.contains('-') {
                format!("'{partition}'")
            } else {
                partition.to_owned()
            };
            client.execute(&format!("ALTER TABLE {table} DROP PARTITION {value}"), true)?;
            dropped.push(format!("{table} {partition}"));
        }
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_schema_splits_into_its_statements() {
        let s = statements();
        let creates: Vec<&str> = s
            .iter()
            .map(|s| {
                let words: Vec<&str> = s.split_whitespace().collect();
                let at = words.iter().position(|w| *w == "EXISTS").unwrap();
                words[at + 1]
            })
            .collect();
        assert_eq!(
            creates,
            [
                "hosts",
                "hosts_1m",
                "hosts_1m_mv",
                "attacks",
                "mitigations",
                "flows"
            ],
            "{s:#?}"
        );
        for table in DAILY_TABLES.iter().chain(&MONTHLY_TABLES) {
            assert!(creates.contains(table));
        }
    }
}
