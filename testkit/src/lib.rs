pub mod x {}

pub mod axum_thread;
pub mod collector;
pub mod judge;
pub mod smtp;
pub mod webhook;
