//! `audit.required`: every exchange first checks that the recorder answers, so once it is
//! killed nothing new is served (503) and nothing reaches Claude; when it is back, service
//! resumes. What can still be lost is what was in flight at the moment it died: entries Envoy
//! had written to the dead connection (the dev config ships each entry at once, nothing waits
//! in Envoy's buffer). The test bounds the loss to those and prints the figure.

use scrim_devstack::stack::{rand_u64, Stack, StackOptions};
use serde_json::json;
use std::time::{Duration, Instant};

struct Sent {
    id: String,
    status: u16,
    finished: Instant,
}

async fn send(stack: &Stack) -> Sent {
    let id = format!("req-{:016x}", rand_u64());
    let status = reqwest::Client::new()
        .post(stack.url("/v1/messages"))
        .bearer_auth(stack.token())
        .header("x-request-id", &id)
        .json(&json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0);
    Sent { id, status, finished: Instant::now() }
}

/// Sends requests until one gets `want`; every attempt is a real exchange, kept in `sent`.
async fn until_status(stack: &Stack, want: u16, sent: &mut Vec<Sent>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = send(stack).await;
        let status = s.status;
        sent.push(s);
        if status == want {
            return;
        }
        assert!(Instant::now() < deadline, "never got {want}; last {status}");
    }
}

fn succeeded(sent: &[Sent]) -> Vec<String> {
    sent.iter().filter(|s| s.status == 200).map(|s| s.id.clone()).collect()
}

#[tokio::test]
async fn recorder_outage_refuses_every_new_exchange_and_loses_only_what_was_in_flight() {
    let mut stack = Stack::start(StackOptions {
        name: "audit-required",
        filter_config: Some(Box::new(|mut c| {
            c["audit"] = json!({"required": true, "health_interval_ms": 100});
            c
        })),
        ..Default::default()
    })
    .await
    .unwrap();
    let limit = Duration::from_secs(20);

    // Before: served and stored.
    let mut before = Vec::new();
    until_status(&stack, 200, &mut before).await;
    for _ in 0..20 {
        before.push(send(&stack).await);
    }
    let missing = stack.recorder.wait_for_all(&succeeded(&before), limit).await;
    assert!(missing.is_empty(), "exchanges served while the recorder was up were not stored: {missing:?}");

    // In flight: served right before the crash, their entries possibly still in Envoy's buffer.
    let mut in_flight = Vec::new();
    for _ in 0..10 {
        in_flight.push(send(&stack).await);
    }
    assert!(in_flight.iter().all(|s| s.status == 200), "recorder still up");
    let killed_at = Instant::now();
    stack.recorder.kill();

    // During: the very first exchange after the crash is already refused, and nothing reaches Claude.
    let upstream_before = stack.stand_in.requests().len();
    for _ in 0..10 {
        let s = send(&stack).await;
        assert_eq!(s.status, 503, "exchange {} served while the recorder was dead", s.id);
    }
    assert_eq!(stack.stand_in.requests().len(), upstream_before, "nothing reaches Claude unrecorded");

    // After: service resumes and everything is stored again.
    stack.recorder.restart().await.unwrap();
    let mut after = Vec::new();
    until_status(&stack, 200, &mut after).await;
    for _ in 0..20 {
        after.push(send(&stack).await);
    }
    let missing = stack.recorder.wait_for_all(&succeeded(&after), limit).await;
    assert!(missing.is_empty(), "exchanges served after the restart were not stored: {missing:?}");
    let missing = stack.recorder.wait_for_all(&succeeded(&before), Duration::ZERO).await;
    assert!(missing.is_empty(), "stored exchanges vanished across the restart: {missing:?}");

    let lost: Vec<&Sent> = {
        let missing = stack.recorder.wait_for_all(&succeeded(&in_flight), Duration::ZERO).await;
        in_flight.iter().filter(|s| missing.contains(&s.id)).collect()
    };
    let served = succeeded(&before).len() + in_flight.len() + succeeded(&after).len();
    println!(
        "audit.required: {served} exchanges served, {} recorded, {} lost (all finished within {} ms before the crash); 10 of 10 refused during the outage",
        served - lost.len(),
        lost.len(),
        lost.iter().map(|s| killed_at.duration_since(s.finished).as_millis()).max().unwrap_or(0),
    );
    // Envoy ships an entry when its exchange ends; the grace covers delivery and the
    // recorder's commit on a loaded machine.
    let grace = Duration::from_millis(500);
    for s in lost {
        assert!(
            killed_at.duration_since(s.finished) <= grace,
            "{} finished {:?} before the crash and was still lost",
            s.id,
            killed_at.duration_since(s.finished)
        );
    }
    stack.assert_no_filter_failures();
}
