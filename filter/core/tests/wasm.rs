//! The masking checks of the native unit tests, compiled to wasm32-unknown-unknown and run
//! under Node (`make test-wasm`), so the 32-bit build is checked, not assumed. The cases and
//! checks are the very ones the native tests call (`scrim_core::testkit`); only the property
//! tests stay native (proptest's random source has no backend here).
#![cfg(target_arch = "wasm32")]

use scrim_core::anthropic_stream::ThinkingMode;
use scrim_core::testkit::{anthropic_stream, builtin, examples, stream_mask};
use wasm_bindgen_test::wasm_bindgen_test;

#[wasm_bindgen_test]
fn every_builtin_positive_example_is_masked_by_its_rule() {
    examples::check_positive_masked(&builtin());
}

#[wasm_bindgen_test]
fn every_builtin_negative_example_is_left_untouched() {
    examples::check_negative_untouched(&builtin());
}

#[wasm_bindgen_test]
fn stream_masking_whole_text_in_one_push_equals_one_shot() {
    stream_mask::check_whole_text_in_one_push(&builtin(), &stream_mask::cases());
}

#[wasm_bindgen_test]
fn stream_masking_every_two_way_split_equals_one_shot() {
    stream_mask::check_every_two_way_split(&builtin(), &stream_mask::cases());
}

#[wasm_bindgen_test]
fn stream_masking_one_character_chunks_equal_one_shot() {
    stream_mask::check_one_character_chunks(&builtin(), &stream_mask::cases());
}

#[wasm_bindgen_test]
fn anthropic_stream_every_split_point_reassembles_to_the_whole_text_masked() {
    for (name, blocks) in anthropic_stream::cases() {
        anthropic_stream::all_splits(name, &blocks, "\n", ThinkingMode::Mask);
    }
}
