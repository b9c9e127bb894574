"""Face regions (fastsider.face.regions): the feature mask covers eyes, brows and lips, not the skin."""

from __future__ import annotations


def test_feature_mask_covers_eyes_brows_lips_and_not_the_skin(example_files):
    from fastsider.face.landmarks import load_landmarks
    from fastsider.face.regions import BROW_UPPER, EYE_LOOP, LIPS_OUTER, feature_mask

    _, lmk_path = example_files
    lmk = load_landmarks(lmk_path)
    h, w = 512, 512
    mask = feature_mask(lmk, (h, w), grow_px=0)

    def at(i: int) -> bool:  # the pixel under landmark i
        return bool(mask[int(round(lmk[i, 1])), int(round(lmk[i, 0]))])

    centres = [lmk[list(EYE_LOOP[s])].mean(0) for s in ("right", "left")] + [lmk[list(LIPS_OUTER)].mean(0)]
    assert all(mask[int(c[1]), int(c[0])] for c in centres)
    brow_mid = [lmk[[BROW_UPPER[s][2], 52 if s == "right" else 282]].mean(0) for s in ("right", "left")]
    assert all(mask[int(p[1]), int(p[0])] for p in brow_mid)
    nose_tip, cheek_right, cheek_left, forehead = 1, 50, 280, 151
    assert not any(at(i) for i in (nose_tip, cheek_right, cheek_left, forehead))
    grown = feature_mask(lmk, (h, w), grow_px=3)
    assert grown.sum() > mask.sum() and (grown | mask).sum() == grown.sum()
