package ai.mobilegen

/** Between the sampler's float images and pixels, in the manifest's layout. */
object Images {
    /** Initial noise drawn as [1, C, H, W] (what torch.randn gives) reordered to the manifest's layout. */
    fun fromNchw(x: FloatArray, manifest: Manifest): FloatArray {
        require(x.size == manifest.imageValues) { "expected ${manifest.imageValues} values, got ${x.size}" }
        if (manifest.layout == Layout.NCHW) return x.copyOf()
        val hw = manifest.imageSize * manifest.imageSize
        val c = manifest.channels
        return FloatArray(x.size) { i -> x[(i % c) * hw + i / c] }
    }

    /**
     * Pixels as 0..255, height x width x channel (RGB), exactly manifest.sampler_defaults.image_from_x:
     * uint8 = floor((clamp(x, -1, 1) + 1) / 2 * 255).
     */
    fun toRgb(x: DoubleArray, manifest: Manifest): IntArray {
        require(x.size == manifest.imageValues) { "expected ${manifest.imageValues} values, got ${x.size}" }
        val hw = manifest.imageSize * manifest.imageSize
        val c = manifest.channels
        return IntArray(x.size) { i ->
            val v = if (manifest.layout == Layout.NHWC) x[i] else x[(i % c) * hw + i / c]
            Math.floor((v.coerceIn(-1.0, 1.0) + 1) / 2 * 255).toInt()
        }
    }

    /** Opaque ARGB pixels, row by row, for android.graphics.Bitmap.createBitmap(pixels, w, h, ARGB_8888). */
    fun toArgb(x: DoubleArray, manifest: Manifest): IntArray {
        require(manifest.channels == 3) { "ARGB needs 3 channels, the manifest has ${manifest.channels}" }
        val rgb = toRgb(x, manifest)
        return IntArray(rgb.size / 3) { p ->
            (0xFF shl 24) or (rgb[3 * p] shl 16) or (rgb[3 * p + 1] shl 8) or rgb[3 * p + 2]
        }
    }
}
