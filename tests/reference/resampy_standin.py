"""A minimal stand-in for `resampy`, used only so that torchvggish's `vggish_input` (which imports resampy at
module level) can be imported without it. The parity tests feed torchvggish 16 kHz audio, where its front end
never resamples; any real resampling request is refused rather than approximated."""


def resample(x, sr_orig, sr_new, *args, **kwargs):
    if sr_orig != sr_new:
        raise NotImplementedError(f"resampy stand-in: cannot resample {sr_orig} Hz -> {sr_new} Hz (only the "
                                  "identity at equal rates is supported; install resampy for more)")
    return x
