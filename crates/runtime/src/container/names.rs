//! Generated container names, docker style: `adjective_noun`.

const ADJECTIVES: &[&str] = &[
    "agile", "bold", "brave", "bright", "calm", "clever", "cool", "eager", "fair", "fast",
    "gentle", "happy", "hardy", "keen", "kind", "lively", "lucid", "merry", "nimble", "noble",
    "proud", "quick", "quiet", "rapid", "sharp", "shiny", "steady", "sturdy", "swift", "tidy",
    "vivid", "wise",
];

const NOUNS: &[&str] = &[
    "anchor",
    "barge",
    "beacon",
    "brig",
    "buoy",
    "canoe",
    "cutter",
    "dinghy",
    "dory",
    "ferry",
    "frigate",
    "galleon",
    "harbor",
    "hull",
    "junk",
    "keel",
    "ketch",
    "lighthouse",
    "mast",
    "pier",
    "raft",
    "rudder",
    "schooner",
    "sloop",
    "tanker",
    "tender",
    "tug",
    "wharf",
    "yacht",
    "yawl",
    "compass",
    "sail",
];

/// A random name; the store retries on the rare collision.
pub fn generate() -> String {
    let random = super::new_id();
    let pick =
        |at: usize, len: usize| usize::from_str_radix(&random[at..at + 4], 16).unwrap_or(0) % len;
    format!("{}_{}", ADJECTIVES[pick(0, ADJECTIVES.len())], NOUNS[pick(4, NOUNS.len())])
}
