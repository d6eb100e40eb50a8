package ai.mobilegen

import org.tensorflow.lite.Interpreter
import java.nio.ByteBuffer
import java.nio.ByteOrder

/**
 * [Denoiser] over a LiteRT Interpreter, through the file's `serving_default` signature, in the
 * manifest's layout (NHWC for TFLite files). Needs the Android LiteRT runtime
 * (com.google.ai.edge.litert:litert), so this file is the one part of the library that the
 * repository's tests do not compile; the tests drive the same files through [Denoiser].
 */
class LiteRtDenoiser(private val interpreter: Interpreter, private val manifest: Manifest) : Denoiser {
    private val n = manifest.batch * manifest.imageValues
    private val x = direct(4 * n)
    private val t = direct(4 * manifest.batch)
    private val y = direct(4 * manifest.batch)
    private val out = direct(4 * n)

    override fun eps(x: FloatArray, t: FloatArray, y: IntArray): FloatArray {
        this.x.rewind(); this.x.asFloatBuffer().put(x)
        this.t.rewind(); this.t.asFloatBuffer().put(t)
        this.y.rewind(); this.y.asIntBuffer().put(y)
        out.rewind()
        interpreter.runSignature(mapOf<String, Any>("x" to this.x, "t" to this.t, "y" to this.y),
            mapOf<String, Any>("eps" to out), "serving_default")
        return FloatArray(n).also { out.rewind(); out.asFloatBuffer().get(it) }
    }

    private fun direct(bytes: Int) = ByteBuffer.allocateDirect(bytes).order(ByteOrder.nativeOrder())
}
