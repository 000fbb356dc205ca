//! Unit tests of the fleet's pure parts: the policies' order, prefix keys, the owners' bound.

use super::owners::{Owners, OWNERS_KEPT};
use super::*;
use crate::backend::PromptSpec;
use crate::spec::template::TemplateMessage;

fn standing(loads: &[(bool, usize)]) -> Vec<Standing> {
    loads.iter().map(|&(usable, load)| Standing { usable, load }).collect()
}

#[test]
fn round_robin_takes_usable_nodes_in_turn() {
    let s = standing(&[(true, 0), (true, 5), (true, 0)]);
    assert_eq!(order(FleetPolicy::RoundRobin, &s, Some(2), 0, 4), vec![0, 1, 2]);
    assert_eq!(order(FleetPolicy::RoundRobin, &s, Some(2), 1, 4), vec![1, 2, 0]);
    let s = standing(&[(true, 0), (false, 0), (true, 0)]);
    assert_eq!(order(FleetPolicy::RoundRobin, &s, None, 1, 4), vec![2, 0]);
    // The down node's turns are shared evenly, not all given to its neighbour.
    let firsts: Vec<usize> = (0..4).map(|t| order(FleetPolicy::RoundRobin, &s, None, t, 4)[0]).collect();
    assert_eq!(firsts, vec![0, 2, 0, 2]);
}

#[test]
fn least_loaded_ranks_by_load_and_rotates_ties() {
    let s = standing(&[(true, 3), (true, 1), (true, 1)]);
    assert_eq!(order(FleetPolicy::LeastLoaded, &s, None, 0, 4), vec![1, 2, 0]);
    assert_eq!(order(FleetPolicy::LeastLoaded, &s, None, 2, 4), vec![2, 1, 0]);
}

#[test]
fn cache_aware_keeps_the_owner_until_it_is_past_the_threshold() {
    // The owner (node 0) has 4 more than the least loaded: still within a threshold of 4.
    let s = standing(&[(true, 4), (true, 0), (true, 2)]);
    assert_eq!(order(FleetPolicy::CacheAware, &s, Some(0), 0, 4), vec![0, 1, 2]);
    // One more, and the least-loaded node takes it.
    let s = standing(&[(true, 5), (true, 0), (true, 2)]);
    assert_eq!(order(FleetPolicy::CacheAware, &s, Some(0), 0, 4), vec![1, 2, 0]);
    // No owner: least loaded; an owner that is down is passed over.
    assert_eq!(order(FleetPolicy::CacheAware, &s, None, 0, 4), vec![1, 2, 0]);
    let s = standing(&[(false, 0), (true, 1), (true, 0)]);
    assert_eq!(order(FleetPolicy::CacheAware, &s, Some(0), 0, 4), vec![2, 1]);
}

#[test]
fn with_no_usable_node_every_node_is_tried() {
    let s = standing(&[(false, 0), (false, 0)]);
    assert_eq!(order(FleetPolicy::CacheAware, &s, Some(1), 1, 4), vec![1, 0]);
    assert!(order(FleetPolicy::RoundRobin, &[], None, 0, 4).is_empty());
}

fn chat(contents: &[&str]) -> PromptSpec {
    let messages = contents.iter().enumerate().map(|(i, c)| TemplateMessage { role: if i % 2 == 0 { "user" } else { "assistant" }.into(), content: (*c).into() }).collect();
    PromptSpec::Chat { messages, tools: Vec::new() }
}

#[test]
fn a_conversations_next_turn_finds_the_node_that_served_the_last() {
    let first = prefix_keys("m", &chat(&["hi"]));
    let second = prefix_keys("m", &chat(&["hi", "hello", "how are you?"]));
    assert_eq!(first.len(), 1);
    assert_eq!(second.len(), 3);
    assert_eq!(first[0], second[0]);
    let mut owners = Owners::default();
    owners.record(&first, "http://a");
    assert_eq!(owners.owner(&second).as_deref(), Some("http://a"));
    // A longer shared prefix wins over a shorter one.
    owners.record(&second[..2], "http://b");
    assert_eq!(owners.owner(&second).as_deref(), Some("http://b"));
    // Another model, or another first message, shares nothing.
    assert_eq!(owners.owner(&prefix_keys("n", &chat(&["hi"]))), None);
    assert_eq!(owners.owner(&prefix_keys("m", &chat(&["hey"]))), None);
}

#[test]
fn a_generate_prompt_is_compared_in_pieces() {
    let doc = "x".repeat(3000);
    let gen = |p: String| PromptSpec::Generate { prompt: p, system: None, template: None, raw: false, context: Vec::new() };
    let a = prefix_keys("m", &gen(format!("{doc} first question")));
    let b = prefix_keys("m", &gen(format!("{doc} second question")));
    assert_eq!(a.len(), 3);
    assert_eq!(a[..2], b[..2]);
    assert_ne!(a[2], b[2]);
}

#[test]
fn owners_forget_the_oldest_beyond_their_bound() {
    let mut owners = Owners::default();
    owners.record(&[1], "http://a");
    let many: Vec<u64> = (2..=OWNERS_KEPT as u64 + 1).collect();
    owners.record(&many, "http://b");
    assert_eq!(owners.map.len(), OWNERS_KEPT);
    assert_eq!(owners.owner(&[1]), None);
    // Recorded again, a key is young again.
    owners.record(&[2], "http://c");
    owners.record(&[OWNERS_KEPT as u64 + 2], "http://b");
    assert_eq!(owners.owner(&[2]).as_deref(), Some("http://c"));
    assert!(owners.order.len() <= 2 * OWNERS_KEPT);
}
