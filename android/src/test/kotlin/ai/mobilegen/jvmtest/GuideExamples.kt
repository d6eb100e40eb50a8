package ai.mobilegen.jvmtest

import ai.mobilegen.ComputePath
import ai.mobilegen.DdimSampler
import ai.mobilegen.DdimSchedule
import ai.mobilegen.Denoiser
import ai.mobilegen.Images
import ai.mobilegen.Manifest
import ai.mobilegen.PathChoice
import ai.mobilegen.choosePath

// The code blocks of docs/android.md, compiled by tests/android/test_kotlin.py (and run by its
// `example` mode). The doc test checks that every Kotlin block of the guide is in this file,
// in the compiled library, or in LiteRtDenoiser.kt (Android only, not compiled here).

/** One image from manifest.json's text and any [Denoiser]: ARGB pixels for Bitmap.createBitmap. */
fun generate(manifestJson: String, denoiser: Denoiser, label: String, seed: Long): IntArray {
    val manifest = Manifest.parse(manifestJson) // throws ManifestException for a failed or unknown export
    val rng = java.util.Random(seed) // not torch.randn: see reproduce() for images made on a desktop
    val noise = FloatArray(manifest.imageValues) { rng.nextGaussian().toFloat() } // x_T, i.i.d., so any layout
    val x = DdimSampler(manifest, denoiser).sample(manifest.labelIndex(label), noise)
    return Images.toArgb(x, manifest)
}

/** The image `mobilegen-export sample --seed S --steps N` made: its x_T ([1, 3, 64, 64], NCHW) passed in. */
fun reproduce(manifest: Manifest, denoiser: Denoiser, label: Int, noiseNchw: FloatArray, steps: Int, guidance: Double): IntArray {
    val timesteps = DdimSchedule.timesteps(manifest.T, steps)
    val x = DdimSampler(manifest, denoiser).sample(label, Images.fromNchw(noiseNchw, manifest), guidance, timesteps)
    return Images.toRgb(x, manifest) // height x width x RGB, 0..255
}

/** Watching the steps (a progress bar, or a preview of the image as it forms). */
fun withProgress(manifest: Manifest, denoiser: Denoiser, label: Int, noise: FloatArray, show: (Int, IntArray) -> Unit): DoubleArray =
    DdimSampler(manifest, denoiser).sample(label, noise) { t, x -> show(t, Images.toArgb(x, manifest)) }

/** The path for [file]: the user's [setting] if the export verified it, else the library's choice. */
fun pathFor(manifest: Manifest, file: String, setting: ComputePath?, log: (String) -> Unit): PathChoice {
    val wanted = manifest.choosePath(file, setting)
    val choice = if (wanted.verified) wanted else manifest.choosePath(file).also { log(wanted.text) }
    log(choice.text) // e.g. "GPU float16: verified, per-step >= 50.8 dB, image 44.3 dB / SSIM 0.981 (ddim 10 steps, guidance 3.0)"
    return choice // then LiteRtDenoiser.openAsset(context, file, manifest, choice = choice)
}
