package ai.mobilegen.jvmtest

import ai.mobilegen.ComputePath
import ai.mobilegen.DdimSampler
import ai.mobilegen.DdimSchedule
import ai.mobilegen.Denoiser
import ai.mobilegen.Images
import ai.mobilegen.Manifest
import ai.mobilegen.ManifestException
import ai.mobilegen.choosePath
import java.io.DataInputStream
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import kotlin.system.exitProcess

/**
 * The JVM side of tests/android/test_kotlin.py. Every mode reads a real manifest.json with [Manifest]:
 *
 *   manifest MANIFEST                                   parse; print a summary, or the refusal (exit 3)
 *   closed-form MANIFEST XT LABEL GUIDANCE STEPS OUT    sample with [ClosedForm]; OUT: x after every step, float64
 *   bridge MANIFEST XT LABEL GUIDANCE STEPS OUT CMD...  sample with eps from the process CMD; OUT: uint8 HWC pixels
 *   timesteps T STEPS                                   print DdimSchedule.timesteps
 *   example MANIFEST                                    run docs/android.md's generate() with [ClosedForm]
 *   path MANIFEST FILE [OVERRIDE]                       Manifest.choosePath: a key=value line, then its text
 *
 * XT is the initial noise as float32 [1, C, H, W] (little-endian); the layout conversion, the
 * loop and the image conversion are the library's.
 */
fun main(args: Array<String>) {
    try {
        when (args[0]) {
            "manifest" -> {
                val m = Manifest.parse(File(args[1]).readText())
                println("ok batch=${m.batch} layout=${m.layout} T=${m.T} steps=${m.timesteps.size} guidance=${m.guidance} labels=${m.labels.size}")
            }
            "example" -> {
                val text = File(args[1]).readText()
                var steps = 0
                val manifest = Manifest.parse(text)
                val pixels = generate(text, ClosedForm(manifest), "ship", 1L)
                withProgress(manifest, ClosedForm(manifest), 8, FloatArray(manifest.imageValues)) { _, _ -> steps++ }
                val lines = mutableListOf<String>()
                val path = pathFor(manifest, "denoiser_float16.tflite", ComputePath.GPU_FP32) { lines.add(it) }.path
                println("pixels=${pixels.size} distinct=${pixels.distinct().size} steps=$steps path=$path log=${lines.size}")
            }
            "path" -> {
                val manifest = Manifest.parse(File(args[1]).readText())
                val c = manifest.choosePath(args[2], args.getOrNull(3)?.let { ComputePath.valueOf(it) })
                println("path=${c.path} verified=${c.verified} step_psnr=${c.stepPsnrDb} image_psnr=${c.imagePsnrDb} ssim=${c.imageSsim}")
                println(c.text)
            }
            "timesteps" -> println(DdimSchedule.timesteps(args[1].toInt(), args[2].toInt()).joinToString(","))
            "closed-form" -> sample(args, ClosedForm(Manifest.parse(File(args[1]).readText())), trajectory = true)
            "bridge" -> {
                val process = ProcessBuilder(args.drop(7)).redirectError(ProcessBuilder.Redirect.INHERIT).start()
                try {
                    sample(args, Bridge(process), trajectory = false)
                } finally {
                    process.outputStream.close()
                    process.waitFor()
                }
            }
            else -> throw IllegalArgumentException("unknown mode ${args[0]}")
        }
    } catch (e: ManifestException) {
        System.err.println("ManifestException: ${e.message}")
        exitProcess(3)
    }
}

private fun sample(args: Array<String>, denoiser: Denoiser, trajectory: Boolean) {
    val manifest = Manifest.parse(File(args[1]).readText())
    val xT = Images.fromNchw(readFloats(File(args[2])), manifest)
    val label = args[3].toInt()
    val guidance = args[4].toDouble()
    val timesteps = DdimSchedule.timesteps(manifest.T, args[5].toInt())
    val states = mutableListOf<DoubleArray>()
    val x = DdimSampler(manifest, denoiser).sample(label, xT, guidance, timesteps) { _, state -> states.add(state) }
    File(args[6]).outputStream().buffered().use { out ->
        if (trajectory) {
            val bytes = ByteBuffer.allocate(8 * manifest.imageValues).order(ByteOrder.LITTLE_ENDIAN)
            for (state in states) {
                bytes.clear()
                bytes.asDoubleBuffer().put(state)
                out.write(bytes.array())
            }
        } else {
            out.write(Images.toRgb(x, manifest).map { it.toByte() }.toByteArray())
        }
    }
}

private fun readFloats(file: File): FloatArray {
    val bytes = ByteBuffer.wrap(file.readBytes()).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer()
    return FloatArray(bytes.remaining()).also { bytes.get(it) }
}

/**
 * A closed-form stand-in for the network, the same formula as tests/android/test_kotlin.py's numpy one:
 * eps = 0.5 sin(x (1 + t / 1000)) + 0.1 channel + 0.01 (y + 1), computed in float64, returned as
 * float32. It depends on the channel, so a layout mistake changes the result.
 */
class ClosedForm(private val manifest: Manifest) : Denoiser {
    override fun eps(x: FloatArray, t: FloatArray, y: IntArray): FloatArray {
        val n = manifest.imageValues
        return FloatArray(x.size) { i ->
            val row = i / n
            (0.5 * Math.sin(x[i] * (1 + t[row] / 1000.0)) + 0.1 * manifest.channelOf(i % n) + 0.01 * (y[row] + 1)).toFloat()
        }
    }
}

/** eps from another process (tests/android_bridge.py runs the .tflite file): float32 little-endian x, t, y in; eps out. */
class Bridge(process: Process) : Denoiser {
    private val toBridge = process.outputStream.buffered()
    private val fromBridge = DataInputStream(process.inputStream.buffered())

    override fun eps(x: FloatArray, t: FloatArray, y: IntArray): FloatArray {
        val bytes = ByteBuffer.allocate(4 * (x.size + t.size + y.size)).order(ByteOrder.LITTLE_ENDIAN)
        x.forEach { bytes.putFloat(it) }
        t.forEach { bytes.putFloat(it) }
        y.forEach { bytes.putInt(it) }
        toBridge.write(bytes.array())
        toBridge.flush()
        val reply = ByteArray(4 * x.size)
        fromBridge.readFully(reply)
        val eps = ByteBuffer.wrap(reply).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer()
        return FloatArray(x.size).also { eps.get(it) }
    }
}
