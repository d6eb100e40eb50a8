package ai.mobilegen

/**
 * The DDIM timestep spacing the exporter uses (mobilegen/diffusion/ddim.py): [steps] integers
 * evenly spaced from T-1 down to 1, both ends included, rounded half to even as numpy's
 * round(linspace(T-1, 1, steps)) does; one step is just [T-1].
 */
object DdimSchedule {
    fun timesteps(T: Int, steps: Int): IntArray {
        require(steps in 1 until T) { "DDIM steps must be in 1..${T - 1}, got $steps" }
        if (steps == 1) return intArrayOf(T - 1)
        val start = (T - 1).toDouble()
        val step = (1.0 - start) / (steps - 1)
        return IntArray(steps) { k -> if (k == steps - 1) 1 else Math.rint(k * step + start).toInt() }
    }
}

/**
 * Deterministic DDIM (eta = 0, Song et al. 2021 eq. 12) with classifier-free guidance, the loop
 * of mobilegen/runtime/ondevice.py. The state x stays float64; each call gets it as float32.
 *
 *     eps    = eps_uncond + guidance * (eps_cond - eps_uncond)   (guidance 0: eps_cond alone)
 *     x0     = (x - sqrt(1 - ab) eps) / sqrt(ab)
 *     x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev) eps           (ab_prev = 1 after the last step)
 *
 * A guided step is one call when the file's batch is 2 or more (rows: x with the label, x with
 * -1), otherwise two batch-1 calls. Spare rows repeat the last one.
 */
class DdimSampler(private val manifest: Manifest, private val denoiser: Denoiser) {

    /**
     * One image: the final x in the manifest's layout ([Images.toRgb] turns it into pixels).
     * [xT] is the initial noise in the manifest's layout (see [Images.fromNchw]); it comes from
     * the caller, so an app or a test can reproduce an image exactly. [onStep] sees x after each step.
     */
    fun sample(
        label: Int,
        xT: FloatArray,
        guidance: Double = manifest.guidance,
        timesteps: IntArray = manifest.timesteps,
        onStep: ((Int, DoubleArray) -> Unit)? = null
    ): DoubleArray {
        require(label >= -1 && label < manifest.labels.size) { "label must be -1..${manifest.labels.size - 1}, got $label" }
        require(xT.size == manifest.imageValues) { "x_T must hold ${manifest.imageValues} values, got ${xT.size}" }
        require(guidance >= 0) { "guidance must be >= 0 (0 turns it off), got $guidance" }
        val abar = manifest.alphasCumprod
        var x = DoubleArray(xT.size) { xT[it].toDouble() }
        for ((k, t) in timesteps.withIndex()) {
            val e = eps(FloatArray(x.size) { x[it].toFloat() }, t, label, guidance)
            val ab = abar[t]
            val abPrev = if (k + 1 < timesteps.size) abar[timesteps[k + 1]] else 1.0
            val a = Math.sqrt(1 - ab)
            val b = Math.sqrt(ab)
            val c = Math.sqrt(abPrev)
            val d = Math.sqrt(1 - abPrev)
            val prev = x
            x = DoubleArray(prev.size) { c * ((prev[it] - a * e[it]) / b) + d * e[it] }
            onStep?.invoke(t, x)
        }
        return x
    }

    /** The guided noise prediction for one image at timestep t. */
    fun eps(x: FloatArray, t: Int, label: Int, guidance: Double): DoubleArray {
        val rows = if (guidance > 0) listOf(label, -1) else listOf(label)
        val out = if (manifest.batch >= rows.size) {
            call(x, t, rows)
        } else {
            rows.map { call(x, t, listOf(it))[0] }
        }
        val cond = out[0]
        if (guidance == 0.0) return DoubleArray(cond.size) { cond[it].toDouble() }
        val uncond = out[1]
        return DoubleArray(cond.size) { uncond[it] + guidance * (cond[it].toDouble() - uncond[it]) }
    }

    /** One call of the file's fixed batch: the same x in every row, labels per row. */
    private fun call(x: FloatArray, t: Int, labels: List<Int>): List<FloatArray> {
        val b = manifest.batch
        val n = manifest.imageValues
        val xs = FloatArray(b * n)
        for (row in 0 until b) x.copyInto(xs, row * n)
        val ys = IntArray(b) { labels[minOf(it, labels.size - 1)] }
        val eps = denoiser.eps(xs, FloatArray(b) { t.toFloat() }, ys)
        check(eps.size == b * n) { "the denoiser returned ${eps.size} values; a batch-$b call returns ${b * n}" }
        return labels.indices.map { eps.copyOfRange(it * n, (it + 1) * n) }
    }
}
