#![no_std]
// This library target exists so that the daemon can name this crate as a
// build-dependency (cargo then rebuilds the daemon when the programs change).
