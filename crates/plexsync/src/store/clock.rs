//! Our clock's times in the store (due times, leases, ages, the breaker),
//! kept true when the wall clock jumps (NTP, a VM restored from a
//! snapshot): shifted by the jump, so a retry due in 5 minutes is still due
//! in 5 minutes, a lease still runs its length and a row keeps its age.

use rusqlite::params;

use super::{kv, Result, Store};

/// kv times in our clock (ms), `0` meaning "never" or "closed".
const KV_TIMES: [&str; 6] =
    [kv::BREAKER_UNTIL, kv::OUTAGE_SINCE, kv::LAST_CAPTURE, kv::LAST_SYNC, kv::LAST_RECONCILE, kv::WATERMARK_WIDE_AT];

impl Store {
    /// Re-bases every stored time of ours written before the wall clock
    /// jumped by `jump_ms` (now `now_ms`). A time written before the jump
    /// lies about `jump_ms` away from one written after it, so only times
    /// on the far side of `now_ms - jump_ms / 2` move: a hook's row written
    /// just after the jump keeps its time.
    pub(crate) fn shift_clock(&self, jump_ms: i64, now_ms: i64) -> Result<usize> {
        let split = now_ms - jump_ms / 2;
        // Forward jump: old times are below the split; backward: above it.
        let old = if jump_ms > 0 { "< ?2" } else { "> ?2" };
        let tx = self.conn.unchecked_transaction()?;
        let mut moved = 0;
        for column in ["next_due", "enqueued_at", "lease_until"] {
            moved += tx.execute(
                &format!("UPDATE queue SET {column} = {column} + ?1 WHERE {column} IS NOT NULL AND {column} {old}"),
                params![jump_ms, split],
            )?;
        }
        for key in KV_TIMES {
            tx.execute(
                &format!(
                    "UPDATE kv SET value = CAST(value AS INTEGER) + ?1
                     WHERE key = ?3 AND CAST(value AS INTEGER) > 0 AND CAST(value AS INTEGER) {old}"
                ),
                params![jump_ms, split, key],
            )?;
        }
        tx.commit()?;
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{kv, now_ms, Reason};

    #[test]
    fn a_clock_that_went_back_an_hour_keeps_delays_and_ages_and_a_new_row_keeps_its_time() {
        let (_dir, q) = crate::store::tests::store();
        let hour = 3_600_000;
        let before = now_ms() + hour; // the clock read this before it went back
        q.enqueue(&crate::ids::SceneId::parse("1").unwrap(), Reason::Hook).unwrap();
        q.conn
            .execute(
                "UPDATE queue SET next_due = ?1, enqueued_at = ?2",
                rusqlite::params![before + 300_000, before - 60_000],
            )
            .unwrap();
        q.set_kv(kv::BREAKER_UNTIL, &(before + 30_000).to_string()).unwrap();
        q.set_kv(kv::OUTAGE_SINCE, "0").unwrap();
        q.enqueue(&crate::ids::SceneId::parse("2").unwrap(), Reason::Hook).unwrap(); // after the jump
        let now = now_ms();
        q.shift_clock(-hour, now).unwrap();
        let due = |id: &str| -> (i64, i64) {
            q.conn
                .query_row("SELECT next_due, enqueued_at FROM queue WHERE scene_id = ?1", [id], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .unwrap()
        };
        let (d1, e1) = due("1");
        assert!((d1 - now - 300_000).abs() < 5_000, "still due in 5 minutes: {}", d1 - now);
        assert!((now - e1 - 60_000).abs() < 5_000, "still a minute old");
        let (d2, _) = due("2");
        assert!(d2 <= now, "the row written after the jump is due now");
        let until = q.kv_number(kv::BREAKER_UNTIL).unwrap();
        assert!((until - now - 30_000).abs() < 5_000, "the breaker still waits 30 s, not an hour");
        assert_eq!(q.kv_number(kv::OUTAGE_SINCE).unwrap(), 0, "a closed breaker stays closed");
    }

    #[test]
    fn a_clock_that_went_forward_a_day_keeps_leases_and_ages() {
        let (_dir, q) = crate::store::tests::store();
        let day = 86_400_000;
        q.enqueue(&crate::ids::SceneId::parse("1").unwrap(), Reason::Hook).unwrap();
        let claimed = q.claim("w", std::time::Duration::from_secs(60), 10).unwrap();
        assert_eq!(claimed.len(), 1);
        let now = now_ms() + day;
        q.shift_clock(day, now).unwrap();
        let (lease, enqueued): (i64, i64) =
            q.conn.query_row("SELECT lease_until, enqueued_at FROM queue", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        assert!(lease > now + 50_000, "the lease still runs about a minute");
        assert!(now - enqueued < 5_000, "the row is not a day old");
    }
}
