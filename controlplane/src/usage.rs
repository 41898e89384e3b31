//! Cost views: persisted usage records aggregated by one dimension
//! (`ConfigService.GetUsage`, `switchyard-ctl usage`).
//!
//! Numbered records are counted once per `(edge, seq)` even if a crash
//! between a batch append and its seq update stored one twice.

use std::collections::{BTreeMap, HashSet};

use switchyard_proto::control::{GetUsageResponse, UsageRecord, UsageReport, UsageRow};

/// What rows are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Key,
    User,
    Team,
    Feature,
    Model,
    Route,
    Provider,
    Edge,
    Hour,
    Day,
}

impl GroupBy {
    pub const NAMES: &'static str =
        "key, user, team, feature, model, route, provider, edge, hour, day";

    /// Parses a `group_by` value; empty = key.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "" | "key" => Self::Key,
            "user" => Self::User,
            "team" => Self::Team,
            "feature" => Self::Feature,
            "model" => Self::Model,
            "route" => Self::Route,
            "provider" => Self::Provider,
            "edge" => Self::Edge,
            "hour" => Self::Hour,
            "day" => Self::Day,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::User => "user",
            Self::Team => "team",
            Self::Feature => "feature",
            Self::Model => "model",
            Self::Route => "route",
            Self::Provider => "provider",
            Self::Edge => "edge",
            Self::Hour => "hour",
            Self::Day => "day",
        }
    }

    fn is_time(self) -> bool {
        matches!(self, Self::Hour | Self::Day)
    }

    fn key(self, edge: &str, r: &UsageRecord) -> String {
        let bucket = |ms: i64| {
            let start = r.timestamp_unix_ms - r.timestamp_unix_ms.rem_euclid(ms);
            crate::versioning::format_unix_ms(start)
        };
        match self {
            Self::Key => r.key_id.clone(),
            Self::User => r.user.clone(),
            Self::Team => r.team.clone(),
            Self::Feature => r.feature.clone(),
            Self::Model => r.model.clone(),
            Self::Route => r.route.clone(),
            Self::Provider => r.provider.clone(),
            Self::Edge => edge.to_string(),
            Self::Hour => bucket(3_600_000),
            Self::Day => bucket(86_400_000),
        }
    }
}

fn add(row: &mut UsageRow, r: &UsageRecord) {
    row.requests += 1;
    row.input_tokens += r.input_tokens;
    row.output_tokens += r.output_tokens;
    row.cached_tokens += r.cached_tokens;
    row.cost_usd += r.cost_usd;
}

/// Accumulates batches into rows.
pub struct Aggregator {
    group_by: GroupBy,
    since: i64,
    until: i64,
    seen: HashSet<(String, u64)>,
    rows: BTreeMap<String, UsageRow>,
    total: UsageRow,
}

impl Aggregator {
    /// Records with `since <= timestamp < until` (0 = unbounded).
    pub fn new(group_by: GroupBy, since: i64, until: i64) -> Self {
        Self {
            group_by,
            since,
            until,
            seen: HashSet::new(),
            rows: BTreeMap::new(),
            total: UsageRow::default(),
        }
    }

    pub fn add(&mut self, edge: &str, batch: &UsageReport) {
        for r in &batch.records {
            if (self.since > 0 && r.timestamp_unix_ms < self.since)
                || (self.until > 0 && r.timestamp_unix_ms >= self.until)
            {
                continue;
            }
            if r.seq > 0 && !self.seen.insert((edge.to_string(), r.seq)) {
                continue;
            }
            let key = self.group_by.key(edge, r);
            let row = self.rows.entry(key.clone()).or_insert_with(|| UsageRow {
                key,
                ..Default::default()
            });
            add(row, r);
            add(&mut self.total, r);
        }
    }

    /// Rows by cost (highest first), or in time order for hour/day.
    pub fn finish(self) -> GetUsageResponse {
        let mut rows: Vec<UsageRow> = self.rows.into_values().collect();
        if !self.group_by.is_time() {
            rows.sort_by(|a, b| {
                b.cost_usd
                    .total_cmp(&a.cost_usd)
                    .then(b.requests.cmp(&a.requests))
                    .then(a.key.cmp(&b.key))
            });
        }
        let mut total = self.total;
        total.key = "TOTAL".into();
        GetUsageResponse {
            rows,
            total: Some(total),
            group_by: self.group_by.as_str().into(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rec(seq: u64, ts: i64, team: &str, cost: f64) -> UsageRecord {
        UsageRecord {
            seq,
            timestamp_unix_ms: ts,
            team: team.into(),
            key_id: format!("k-{team}"),
            input_tokens: 10,
            output_tokens: 5,
            cost_usd: cost,
            ..Default::default()
        }
    }

    #[test]
    fn groups_filters_and_counts_each_record_once() {
        let t = 1_795_428_000_000; // 2026-11-23T10:00:00Z
        let a = UsageReport {
            seq: 3,
            records: vec![
                rec(1, t, "a", 1.0),
                rec(2, t + 3_600_000, "b", 2.0),
                rec(3, t - 86_400_000, "a", 4.0),
            ],
            ..Default::default()
        };
        // The same records stored twice (crash between append and seq).
        let dup = a.clone();
        let mut g = Aggregator::new(GroupBy::Team, t, 0);
        g.add("e1", &a);
        g.add("e1", &dup);
        // Another edge's seq 1 is a different record.
        g.add(
            "e2",
            &UsageReport {
                seq: 1,
                records: vec![rec(1, t, "a", 0.5)],
                ..Default::default()
            },
        );
        let r = g.finish();
        let rows: Vec<(String, u64, f64)> = r
            .rows
            .iter()
            .map(|r| (r.key.clone(), r.requests, r.cost_usd))
            .collect();
        assert_eq!(
            rows,
            vec![("b".into(), 1, 2.0), ("a".into(), 2, 1.5)],
            "by cost; the day-old record is filtered out"
        );
        let total = r.total.unwrap();
        assert_eq!((total.requests, total.input_tokens), (3, 30));

        let mut g = Aggregator::new(GroupBy::Hour, 0, 0);
        g.add("e1", &a);
        let keys: Vec<String> = g.finish().rows.into_iter().map(|r| r.key).collect();
        assert_eq!(
            keys,
            vec![
                "2026-11-22T10:00:00Z",
                "2026-11-23T10:00:00Z",
                "2026-11-23T11:00:00Z"
            ]
        );
        assert_eq!(GroupBy::parse(""), Some(GroupBy::Key));
        assert_eq!(GroupBy::parse("week"), None);
    }
}
