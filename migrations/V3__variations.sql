-- Variations (several seeds of one layout as one job), picking one of them, and upscaling a result.

-- How many images the job renders (1, or up to 4 variations shown as a grid).
ALTER TABLE jobs ADD COLUMN count INTEGER NOT NULL DEFAULT 1;

-- An upscale: the job whose stored image is the base (only the high-res pass runs on it); NULL otherwise.
ALTER TABLE jobs ADD COLUMN base_job_id INTEGER;

-- The images of recent results (PNG), so that a pick posts a grid's image without rendering it again and an
-- upscale starts from its image. Kept for a bounded time and size (image_store_hours, image_store_mb);
-- a pruned image is rendered again from its layout and seed.
CREATE TABLE result_images (
    job_id      INTEGER NOT NULL,
    idx         INTEGER NOT NULL,   -- 0-based position in the job's grid (0 for a single image)
    seed        INTEGER NOT NULL,
    png         BLOB    NOT NULL,
    created_at  REAL    NOT NULL,
    PRIMARY KEY (job_id, idx)
);
CREATE INDEX result_images_created ON result_images(created_at);
