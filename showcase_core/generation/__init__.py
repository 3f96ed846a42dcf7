"""PC²L explanation generator (paper §4.2-4.3): CLIP features of photos and history reviews -> a multi-modal encoder
-> GPT-2 with cross-attention, trained with cross-entropy plus two contrastive losses."""
