//! Recorded OpenAI wire data (`tests/data`): responses as providers send them.

use std::path::PathBuf;

pub fn path(name: &str) -> PathBuf {
    PathBuf::from(crate::ROOT).join("tests/data").join(name)
}

pub fn bytes(name: &str) -> Vec<u8> {
    let p = path(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("fixture {}: {e}", p.display()))
}

pub fn json(name: &str) -> serde_json::Value {
    serde_json::from_slice(&bytes(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}
