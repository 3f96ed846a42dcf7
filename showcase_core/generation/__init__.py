"""PC²L explanation generator (paper §4.2-4.3): CLIP features of photos and history reviews -> a multi-modal encoder
-> GPT-2 with cross-attention, trained with cross-entropy plus two contrastive losses."""

# How explanations are decoded wherever they are written (nightly, Serve, evaluate): beam search never repeats a
# token n-gram of this size, and an explanation ends after this many sentences (showcase_core.generation.decode).
DECODING = {"no_repeat_ngram_size": 3, "length_penalty": 1.0, "max_sentences": 5}
