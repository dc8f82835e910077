//! Empty library target: lets `agent` declare a build-dependency on this crate so cargo
//! rebuilds the programs when they change (the programs themselves are `src/main.rs`).
#![no_std]
