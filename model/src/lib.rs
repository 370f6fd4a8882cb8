//! BLIP-2 model.
