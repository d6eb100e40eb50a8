package ai.mobilegen

/**
 * One call of the exported denoiser (x, t, y) -> eps at the file's fixed batch B = manifest.batch.
 * x holds B images in the manifest's layout (B * manifest.imageValues floats), t one timestep
 * index per row (0..T-1, as float), y one class index per row (-1 = unconditional).
 * Returns eps like x. [LiteRtDenoiser] implements it over a LiteRT Interpreter.
 */
interface Denoiser {
    fun eps(x: FloatArray, t: FloatArray, y: IntArray): FloatArray
}
