//! The rollup levels shared by the usage and SLA tables: raw rows, minutes and hours
//! (`Level`), how long each is kept (`Retention`, and which level answers a query), and
//! finding the closed buckets not folded yet (`unfolded`). Imports only the store's error
//! helpers; `store::samples` and `store::sla` both import it, and it imports neither.

use super::{Result, q};
use serde::Serialize;
use sqlx::SqliteConnection;

/// A rollup level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Raw,
    Minute,
    Hour,
}

impl Level {
    /// The level's own step in seconds (raw: 1, the finest any query may ask).
    pub fn step_s(self) -> i64 {
        match self {
            Level::Raw => 1,
            Level::Minute => 60,
            Level::Hour => 3600,
        }
    }
}

/// How long each level is kept, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub raw_ms: i64,
    pub minute_ms: i64,
    pub hour_ms: i64,
}

impl Default for Retention {
    fn default() -> Self {
        const H: i64 = 3_600_000;
        Retention {
            raw_ms: 48 * H,
            minute_ms: 30 * 24 * H,
            hour_ms: 400 * 24 * H,
        }
    }
}

impl Retention {
    /// How long level `l` is kept.
    pub(super) fn of(&self, l: Level) -> i64 {
        match l {
            Level::Raw => self.raw_ms,
            Level::Minute => self.minute_ms,
            Level::Hour => self.hour_ms,
        }
    }

    /// The finest level whose step fits `step_s` and that still holds data from `from_ms`.
    pub fn pick(&self, from_ms: i64, step_s: i64, now_ms: i64) -> Level {
        for l in [Level::Raw, Level::Minute] {
            let next = if l == Level::Raw { 60 } else { 3600 };
            if step_s < next && from_ms >= now_ms - self.of(l) {
                return l;
            }
        }
        Level::Hour
    }
}

/// The closed buckets of `step_s` not rolled up yet, as [start, closed): after the last bucket
/// `done_sql` (?1 = step_s) finds, or from the bucket of the first row `first_sql` finds.
/// `None` when there is nothing to fold. A rollup marks every bucket before it as done.
pub(super) async fn unfolded(
    tx: &mut SqliteConnection,
    step_s: i64,
    done_sql: &'static str,
    first_sql: &'static str,
    now_ms: i64,
) -> Result<Option<(i64, i64)>> {
    let ms = step_s * 1000;
    let done: Option<i64> = sqlx::query_scalar(done_sql)
        .bind(step_s)
        .fetch_one(&mut *tx)
        .await
        .map_err(q("find the last rollup"))?;
    let start = match done {
        Some(b) => b + ms,
        None => match sqlx::query_scalar::<_, Option<i64>>(first_sql)
            .fetch_one(&mut *tx)
            .await
            .map_err(q("find the first row to roll up"))?
        {
            Some(t) => t.div_euclid(ms) * ms,
            None => return Ok(None),
        },
    };
    let closed = now_ms.div_euclid(ms) * ms;
    Ok((closed > start).then_some((start, closed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_choice() {
        let k = Retention::default();
        let now = 1_000 * 3_600_000;
        assert_eq!(k.pick(now - 3_600_000, 10, now), Level::Raw);
        assert_eq!(k.pick(now - 3_600_000, 60, now), Level::Minute);
        assert_eq!(k.pick(now - 3_600_000, 7200, now), Level::Hour);
        assert_eq!(k.pick(now - 72 * 3_600_000, 10, now), Level::Minute);
        assert_eq!(k.pick(now - 40 * 24 * 3_600_000, 10, now), Level::Hour);
    }
}
