//! virtio devices (being written).
