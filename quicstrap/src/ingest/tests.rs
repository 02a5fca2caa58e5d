//! Unit tests of catch-up: backoff timing, a flapping broker, position checks, topic names.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::store::partition::{self, PartitionId};

#[test]
fn backoff_doubles_and_gives_up_after_the_deadline() {
    let t0 = Instant::now();
    let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
    let deadline = Duration::from_secs(2);
    assert_eq!(b.failure(t0, deadline), Some(Duration::from_millis(100)));
    assert_eq!(b.failure(t0, deadline), Some(Duration::from_millis(200)));
    assert_eq!(b.failure(t0, deadline), Some(Duration::from_millis(350)));
    assert_eq!(
        b.failure(t0 + Duration::from_secs(1), deadline),
        Some(Duration::from_millis(350))
    );
    assert_eq!(b.failure(t0 + Duration::from_secs(2), deadline), None);
    b.success();
    assert_eq!(
        b.failure(t0 + Duration::from_secs(3), deadline),
        Some(Duration::from_millis(100))
    );
}

/// A broker that hands out one record and then fails, on every read, forever.
struct Flapping {
    next: u64,
}

impl LogSource for Flapping {
    async fn watermarks(&mut self) -> Result<Watermarks, LogError> {
        Ok(Watermarks {
            low: 0,
            high: u64::from(u32::MAX),
        })
    }

    async fn read(&mut self, from: u64, _max: usize, _wait: Duration) -> Fetched {
        self.next = from + 1;
        Fetched {
            records: vec![LogRecord {
                offset: from,
                key: Some(from.to_be_bytes().to_vec()),
                value: Some(b"v".to_vec()),
            }],
            error: Some(LogError::Unavailable("connection reset".into())),
        }
    }
}

#[tokio::test]
async fn a_flapping_broker_reaches_the_deadline_though_some_records_arrive() {
    let tmp = tempfile::tempdir().unwrap();
    let db =
        Arc::new(partition::open(tmp.path(), crate::store::partition::TableFormat::Block).unwrap());
    let cfg = CatchUpConfig {
        deadline: Duration::from_millis(300),
        backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
        ..Default::default()
    };
    let mut log = Flapping { next: 0 };
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        catch_up(&db, &mut log, Until::HighWatermark, &cfg),
    )
    .await
    .expect("the deadline ends it")
    .unwrap_err();
    let CatchUpError::Unavailable {
        applied, waited, ..
    } = err
    else {
        panic!("unexpected {err}");
    };
    // The records that came before each failure were kept.
    assert!(applied.is_some_and(|a| a + 1 == log.next), "{applied:?}");
    assert!(waited >= cfg.deadline);
}

#[test]
fn positions_outside_the_log_are_typed_errors() {
    let wm = Watermarks { low: 10, high: 20 };
    assert!(check_position(Some(9), wm).is_ok());
    assert!(check_position(Some(19), wm).is_ok());
    assert!(matches!(
        check_position(Some(5), wm),
        Err(CatchUpError::OffsetOutOfRange {
            have: Some(5),
            earliest: 10
        })
    ));
    assert!(matches!(
        check_position(None, wm),
        Err(CatchUpError::OffsetOutOfRange {
            have: None,
            earliest: 10
        })
    ));
    assert!(matches!(
        check_position(Some(20), wm),
        Err(CatchUpError::ImpossibleOffset {
            have: 20,
            high_watermark: Some(20)
        })
    ));
    assert!(matches!(
        next_offset(Some(u64::MAX)),
        Err(CatchUpError::ImpossibleOffset { have: u64::MAX, .. })
    ));
    assert_eq!(next_offset(None).unwrap(), 0);
}

#[test]
fn topic_templates_substitute_store_and_version_only() {
    let id = PartitionId::new("users", 3, 1).unwrap();
    assert_eq!(topic(&id), "users_v3");
    let t: TopicTemplate = "prod.{store}.v{version}.changelog".parse().unwrap();
    assert_eq!(t.topic(&id), "prod.users.v3.changelog");
    assert!("{store}_{partition}".parse::<TopicTemplate>().is_err());
    assert!("fixed".parse::<TopicTemplate>().is_err());
}
