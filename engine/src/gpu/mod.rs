//! GPU backend on wgpu. (Being written: see engine/src/ops.rs for the calls it must serve.)
