"""Regenerate fastsider/eval/data/example_landmarks.npy: MediaPipe's 478 landmarks on the embedded
example photo (scikit-image's astronaut), the base of the synthetic benchmark faces.

Cached so that synthetic cases do not depend on the detector's version or CPU path (byte-identical
images everywhere); tests/test_synthetic.py checks the cache against a fresh detection.

    python tools/make_synthetic_landmarks.py
"""

import numpy as np

from fastsider.eval.synthetic_base import EXAMPLE_LANDMARKS, detect_example_landmarks

if __name__ == "__main__":
    EXAMPLE_LANDMARKS.parent.mkdir(parents=True, exist_ok=True)
    np.save(EXAMPLE_LANDMARKS, detect_example_landmarks())
    print(f"wrote {EXAMPLE_LANDMARKS}")
