//! Containers. `run` works in the foreground today; the detached lifecycle comes next.

pub mod run;
