package ai.mobilegen

import android.content.Context
import org.tensorflow.lite.Interpreter
import org.tensorflow.lite.gpu.GpuDelegate
import java.io.Closeable
import java.io.FileInputStream
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.channels.FileChannel

/**
 * [Denoiser] over a LiteRT Interpreter, through the file's `serving_default` signature, in the
 * manifest's layout (NHWC for TFLite files). Needs Android and the LiteRT runtime
 * (com.google.ai.edge.litert:litert and litert-gpu): this file is the one part of the library that
 * the repository's tests do not compile. The tests drive the same .tflite files through [Denoiser].
 * [close] frees the interpreter, then the GPU delegate it ran on (if any).
 */
class LiteRtDenoiser(
    private val interpreter: Interpreter,
    manifest: Manifest,
    private val gpu: GpuDelegate? = null
) : Denoiser, Closeable {
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

    override fun close() {
        interpreter.close()
        gpu?.close()
    }

    private fun direct(bytes: Int) = ByteBuffer.allocateDirect(bytes).order(ByteOrder.nativeOrder())

    companion object {
        /**
         * Memory-maps a .tflite file stored uncompressed in the app's assets (noCompress += "tflite") and runs
         * it on [choice]'s path: the GPU delegate in float16 or float32, or the CPU with [threads] threads.
         */
        fun openAsset(
            context: Context,
            name: String,
            manifest: Manifest,
            threads: Int = 4,
            choice: PathChoice = manifest.choosePath(name)
        ): LiteRtDenoiser {
            val fd = context.assets.openFd(name)
            val model = FileInputStream(fd.fileDescriptor).channel
                .map(FileChannel.MapMode.READ_ONLY, fd.startOffset, fd.declaredLength)
            val options = Interpreter.Options().setNumThreads(threads)
            val gpu = if (choice.path == ComputePath.CPU) null
                else GpuDelegate(GpuDelegate.Options().setPrecisionLossAllowed(choice.path == ComputePath.GPU_FP16))
            if (gpu != null) options.addDelegate(gpu)
            val interpreter = try {
                Interpreter(model, options)
            } catch (e: RuntimeException) { // e.g. the phone's GPU cannot run the file: free the delegate
                gpu?.close()
                throw e
            }
            return LiteRtDenoiser(interpreter, manifest, gpu)
        }
    }
}
