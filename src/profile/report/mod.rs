//! Text renderings of a boot profile: a terminal waterfall with the phase
//! and byte totals (`render_text`) and two boots side by side
//! (`render_compare`). The timeline, phase and top-file helpers here are
//! shared with the HTML and trace renderings in [`super::html`].
//!
//! - `timeline`: the rows of a waterfall and its time axis,
//! - `totals`: phases, byte splits and the files that waited longest,
//! - `units`: durations, sizes and dates as people read them,
//! - `text`, `compare`: the two terminal renderings.

mod compare;
mod text;
mod timeline;
mod totals;
mod units;

#[cfg(test)]
pub(crate) mod tests;

pub(crate) use compare::render_compare;
pub(crate) use text::render_text;

pub(crate) use timeline::{axis_end_ms, nice_step, tick_label, timeline, Item, ItemKind};
pub(crate) use totals::{
    ended, node_read_split, percent, phases, prefetch_fetched_bytes, saved_line, top_waits,
    warm_cache_saving,
};
pub(crate) use units::{human_bytes, human_ms, utc};

/// How many files the "waited longest" tables list.
const TOP_FILES: usize = 10;
