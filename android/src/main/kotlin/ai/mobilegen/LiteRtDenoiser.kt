package ai.mobilegen

import android.content.Context
import org.tensorflow.lite.Interpreter
import java.io.FileInputStream
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.channels.FileChannel

/**
 * [Denoiser] over a LiteRT Interpreter, through the file's `serving_default` signature, in the
 * manifest's layout (NHWC for TFLite files). Needs Android and the LiteRT runtime
 * (com.google.ai.edge.litert:litert): this file is the one part of the library that the
 * repository's tests do not compile. The tests drive the same .tflite files through [Denoiser].
 */
class LiteRtDenoiser(private val interpreter: Interpreter, manifest: Manifest) : Denoiser {
    private val n = manifest.batch * manifest.imageValues
    private val xIn = direct(4 * n)
    private val tIn = direct(4 * manifest.batch)
    private val yIn = direct(4 * manifest.batch)
    private val epsOut = direct(4 * n)

    override fun eps(x: FloatArray, t: FloatArray, y: IntArray): FloatArray {
        xIn.rewind()
        xIn.asFloatBuffer().put(x)
        tIn.rewind()
        tIn.asFloatBuffer().put(t)
        yIn.rewind()
        yIn.asIntBuffer().put(y)
        epsOut.rewind()
        val inputs = mapOf<String, Any>("x" to xIn, "t" to tIn, "y" to yIn)
        interpreter.runSignature(inputs, mapOf<String, Any>("eps" to epsOut), "serving_default")
        epsOut.rewind()
        return FloatArray(n).also { epsOut.asFloatBuffer().get(it) }
    }

    private fun direct(bytes: Int) = ByteBuffer.allocateDirect(bytes).order(ByteOrder.nativeOrder())

    companion object {
        /** Memory-maps a .tflite file stored uncompressed in the app's assets (noCompress += "tflite"). */
        fun openAsset(context: Context, name: String, manifest: Manifest, threads: Int = 4): LiteRtDenoiser {
            val fd = context.assets.openFd(name)
            val model = FileInputStream(fd.fileDescriptor).channel
                .map(FileChannel.MapMode.READ_ONLY, fd.startOffset, fd.declaredLength)
            return LiteRtDenoiser(Interpreter(model, Interpreter.Options().setNumThreads(threads)), manifest)
        }
    }
}
