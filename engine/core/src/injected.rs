//! Faults built in on purpose, so tests can prove the simulator's checker catches them.
//! Only the simulation sets one; a daemon never does.

/// A fault built in on purpose, so tests can prove the simulator's checker catches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectedBug {
    /// The secondary persists the applied watermark without flushing the replicas first,
    /// so a power loss can leave a replica older than the watermark says.
    UnflushedWatermark,
    /// The secondary applies a held resync's data sets as they complete, before its end
    /// point is durable, so the replica stops being the image it claims (its base)
    /// mid-resync.
    EagerResync,
    /// The primary admits the application's writes beside a held resync as if it kept no
    /// room for it, so they can fill the secondary's window before the end point.
    ResyncWithoutRoom,
}
