"""Explicit Arrow schemas of every table the project writes. Ids are strings everywhere."""

import pyarrow as pa

HISTORY_ITEM = pa.struct([("review_id", pa.string()), ("text", pa.string())])

# One row per accepted review. review_id is "<user_id>_<business_id>", Gest's review_key.
REVIEWS = pa.schema(
    [
        ("review_id", pa.string()),
        ("user_id", pa.string()),
        ("business_id", pa.string()),
        ("rating", pa.float32()),
        ("review_text", pa.string()),
        ("split", pa.string()),  # train | val | test
        ("pic_ids", pa.list_(pa.string())),
        ("history", pa.list_(HISTORY_ITEM)),  # the user's other reviews as Gest-s2 ships them; empty otherwise
        ("time_ms", pa.int64()),  # Google Local review time, null elsewhere
        ("source", pa.string()),  # file the record came from
        ("position", pa.string()),  # where in that file: "train[17]" or "byte 123456"
    ]
)

# One row per photo of an accepted review.
IMAGES = pa.schema(
    [
        ("image_id", pa.string()),
        ("review_id", pa.string()),
        ("user_id", pa.string()),
        ("business_id", pa.string()),
        ("split", pa.string()),
        ("uri", pa.string()),  # where the JPEG lives: a local path or s3://bucket/key
    ]
)

# Review sentences aligned with the photos they describe (the world's sidecar, or jobs.distill on real Gest).
OWNER_PHOTOS = pa.schema([("image_id", pa.string()), ("business_id", pa.string()),
                          ("uri", pa.string())])  # a business's own photos, apart from the reviews
BUSINESSES = pa.schema([("business_id", pa.string()), ("latitude", pa.float64()),
                        ("longitude", pa.float64())])  # a business's place, in degrees (WGS 84)

SENTENCES = pa.schema(
    [
        ("sentence_id", pa.string()),  # "<review_id>#<sentence_index>"
        ("review_id", pa.string()),
        ("sentence_index", pa.int32()),
        ("text", pa.string()),
        ("pic_ids", pa.list_(pa.string())),  # photos this sentence describes; empty for generic filler
        ("entities", pa.list_(pa.string())),  # entities it names, when known
        ("split", pa.string()),  # the review's split
    ]
)

# Anything that did not make it into the tables above, and why.
QUARANTINE = pa.schema(
    [
        ("source", pa.string()),
        ("position", pa.string()),
        ("reason", pa.string()),  # a code from showcase_core.data.validate.REASONS
        ("field", pa.string()),  # the offending field, when one is to blame
        ("detail", pa.string()),  # one human-readable line
        ("record", pa.string()),  # the raw record, truncated
    ]
)

SPLITS = ("train", "val", "test")


# One personalized showcase per candidate (user, business) pair (jobs.nightly, jobs.serve).
SHOWCASES = pa.schema(
    [
        ("user_id", pa.string()),
        ("business_id", pa.string()),
        ("image_ids", pa.list_(pa.string())),  # the K picked photos, in pick order
        ("image_uris", pa.list_(pa.string())),  # where each photo lives (local path or s3://)
        ("image_scores", pa.list_(pa.float32())),  # each pick's relevance q_i under the DPP kernel
        ("explanation", pa.string()),  # null for an images-only showcase
        ("images_only", pa.bool_()),  # no generator wrote an explanation (``--generator none``): photos only
        ("cold_start", pa.bool_()),  # the user had no history: business-side signals only
        ("candidate_score", pa.float32()),  # the upstream recommender's score, when given
        ("candidate_rank", pa.int32()),  # the upstream recommender's rank of the pair, when given
        ("encoder_id", pa.string()),
        ("dpp_model", pa.string()),
        ("generator_model", pa.string()),
        ("run_id", pa.string()),
        ("generated_at", pa.string()),  # ISO 8601, UTC
        ("dt", pa.string()),  # the nightly's date (YYYY-MM-DD): the partition of the showcases table
    ]
)

# Candidate pairs the nightly could not showcase, and why (the showcases_quarantine table, partitioned by dt).
# The candidate pairs jobs.recommend writes (partitioned by dt) and jobs.nightly --candidates latest reads.
CANDIDATES = pa.schema([("user_id", pa.string()), ("business_id", pa.string()), ("score", pa.float64()),
                        ("rank", pa.int64()), ("model", pa.string()), ("cold_start_user", pa.bool_()),
                        ("cold_start_item", pa.bool_()), ("dt", pa.string())])

SHOWCASES_QUARANTINE = pa.schema([("user_id", pa.string()), ("business_id", pa.string()), ("reason", pa.string()),
                                  ("detail", pa.string()), ("run_id", pa.string()), ("dt", pa.string())])
