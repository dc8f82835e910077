//! The agent → graph server protocol, generated from `proto/nephilia/v1/*.proto`.

/// Version 1 of the protocol.
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/nephilia.v1.rs"));
}
