package ai.mobilegen

import java.util.Locale

/**
 * How LiteRT computes the denoiser on the phone, each with the manifest's name for the path the
 * export checked (`mobilegen-export tflite --targets gpu,arm64`, manifest section `targets`).
 */
enum class ComputePath(val targetName: String, val title: String) {
    /** GPU delegate with its default precision (precisionLossAllowed = true): float16 arithmetic. */
    GPU_FP16("gpu-fp16", "GPU float16"),
    /** GPU delegate with precisionLossAllowed = false. */
    GPU_FP32("gpu-fp32", "GPU float32"),
    /** The CPU (XNNPACK, float32): the export's x86 gates verify it; the ARM64 figures are arm64-fp32's. */
    CPU("arm64-fp32", "CPU float32")
}

/** The path [Manifest.choosePath] picked for one file, whether the export verified it, and what it measured. */
class PathChoice(
    val path: ComputePath,
    val file: String,
    val verified: Boolean,
    /** The export's entry for [path] on [file] (for CPU: arm64-fp32); null when it did not run that path on the file. */
    val measured: VerifiedPath?,
    /** One line for a log or a settings screen, e.g. "GPU float16: verified, per-step >= 50.8 dB, image 44.3 dB / SSIM 0.981 (...)". */
    val text: String
) {
    /** The smallest per-step PSNR (dB) against the float64 model over the check's cases; null when not measured or not finite. */
    val stepPsnrDb: Double? get() = measured?.step?.minPsnrDb
    /** The final image's PSNR (dB) and SSIM against PyTorch float32 (float16-arithmetic paths only). */
    val imagePsnrDb: Double? get() = measured?.image?.minPsnrDb
    val imageSsim: Double? get() = measured?.image?.minSsim
}

/**
 * Picks how to run [file] (a name in the export folder, e.g. "denoiser_float16.tflite"): GPU float16 if
 * the export verified gpu-fp16 on that file, else GPU float32 if it verified gpu-fp32, else the CPU,
 * which the export's own parity gates verify (the manifest's status is "passed"). An [override] is
 * honoured; the choice then says whether the export verified it and what it measured.
 */
fun Manifest.choosePath(file: String, override: ComputePath? = null): PathChoice {
    val results = targets?.results?.get(file).orEmpty()
    val path = override
        ?: listOf(ComputePath.GPU_FP16, ComputePath.GPU_FP32).firstOrNull { results[it.targetName]?.passed == true }
        ?: ComputePath.CPU
    val measured = results[path.targetName]
    // The CPU stays verified without an ARM64 run (x86 gates), but not if an ARM64 run failed.
    val verified = measured?.passed ?: (path == ComputePath.CPU)
    val text = when {
        !verified -> "${path.title}: NOT verified for $file (${whyNot(path, measured)})"
        measured == null -> "${path.title}: verified by the export's parity gates (no ARM64 run for $file: export with --targets arm64)"
        path == ComputePath.CPU -> "${path.title}: verified by the export's parity gates; on ARM64 ${figures(measured, targets)}"
        else -> "${path.title}: verified, ${figures(measured, targets)}"
    }
    return PathChoice(path, file, verified, measured, text)
}

private fun Manifest.whyNot(path: ComputePath, measured: VerifiedPath?): String = when {
    measured != null -> "${path.targetName} failed: ${measured.failures.joinToString("; ").ifEmpty { "no reason given" }}"
    targets?.results.orEmpty().values.any { path.targetName in it } -> "the export checked ${path.targetName} on other files only"
    else -> "export with --targets ${path.targetName.substringBefore('-')}"
}

private fun figures(p: VerifiedPath, targets: Targets?): String {
    val step = "per-step >= ${db(p.step.minPsnrDb)}"
    val image = p.image ?: return step
    val ssim = image.minSsim?.let { String.format(Locale.ROOT, "%.3f", it) } ?: "n/a"
    val run = targets?.trajectory?.let { " (${it.sampler} ${it.steps} steps, guidance ${it.guidance})" }.orEmpty()
    return "$step, image ${db(image.minPsnrDb)} / SSIM $ssim$run"
}

private fun db(value: Double?) = if (value == null) "n/a (not finite)" else String.format(Locale.ROOT, "%.1f dB", value)

/** The manifest's `targets` section: the export's check of each file on the paths a phone runs. */
class Targets(
    /** The (t, y) cases of the per-step check, as the export describes them. */
    val cases: List<String>,
    val trajectory: TrajectorySettings,
    /** Runtime versions the paths ran on, by runtime ("gpu", "arm64"); free text. */
    val runtimes: Map<String, String>,
    /** File name -> path name ("gpu-fp16", "arm64-fp32", ...) -> result. Unknown path names are kept, never chosen. */
    val results: Map<String, Map<String, VerifiedPath>>
) {
    internal companion object {
        /** The runtime and arithmetic each known path name stands for; a manifest that disagrees is refused. */
        private val KNOWN = mapOf("gpu-fp16" to ("gpu" to "fp16"), "gpu-fp32" to ("gpu" to "fp32"),
            "arm64-fp32" to ("arm64" to "fp32"), "arm64-fp16" to ("arm64" to "fp16"), "arm64-a53-fp32" to ("arm64" to "fp32"))

        fun parse(node: Manifest.Node): Targets {
            val run = node.obj("trajectory")
            val settings = TrajectorySettings(run.string("sampler"), run.int("steps"), run.double("guidance"), run.int("seed"),
                run.array("classes").strings())
            val runtimes = node.obj("runtimes").let { r -> r.keys.associateWith { r.string(it) } }
            val results = node.obj("results").let { files ->
                files.keys.associateWith { file -> files.obj(file).let { p -> p.keys.associateWith { verifiedPath(p.obj(it), it) } } }
            }
            return Targets(node.array("cases").strings(), settings, runtimes, results)
        }

        private fun verifiedPath(node: Manifest.Node, name: String): VerifiedPath {
            val runtime = node.string("runtime")
            val precision = node.string("precision")
            val known = KNOWN[name]
            if (known != null && runtime != known.first) node.wrong("runtime", "'${known.first}' (the runtime of $name)")
            if (known != null && precision != known.second) node.wrong("precision", "'${known.second}' (the arithmetic of $name)")
            val step = node.obj("step")
            val image = if (node.has("trajectory")) node.obj("trajectory") else null
            val coverage = if (node.has("coverage")) node.obj("coverage") else null
            return VerifiedPath(name, runtime, precision, node.boolean("passed"), node.array("failures").strings(),
                StepFidelity(step.doubleOrNull("min_psnr_db"), step.doubleOrNull("max_abs_error"), step.double("gate_min_psnr_db")),
                image?.let {
                    ImageFidelity(it.doubleOrNull("min_psnr_db"), it.doubleOrNull("min_ssim"), it.double("gate_min_psnr_db"),
                        it.double("gate_min_ssim"))
                },
                coverage?.boolean("fully_accelerated"), coverage?.int("cpu_ops"))
        }
    }
}

/** The guided run whose final image the float16-arithmetic paths are gated on. */
class TrajectorySettings(val sampler: String, val steps: Int, val guidance: Double, val seed: Int, val classes: List<String>)

/** One file on one path, as the export measured it. [passed] is the export's verdict on all its gates. */
class VerifiedPath(
    val name: String,
    /** "gpu" or "arm64". */
    val runtime: String,
    /** The path's arithmetic, "fp16" or "fp32". */
    val precision: String,
    val passed: Boolean,
    val failures: List<String>,
    val step: StepFidelity,
    /** Float16-arithmetic paths only. */
    val image: ImageFidelity?,
    /** GPU paths only: whether every op ran on the GPU, and how many ran on the CPU instead. */
    val fullyAccelerated: Boolean?,
    val cpuOps: Int?
)

/** One denoiser call against the float64 model; null figures were not finite. */
class StepFidelity(val minPsnrDb: Double?, val maxAbsError: Double?, val gateMinPsnrDb: Double)

/** The final image of [TrajectorySettings]'s run against PyTorch float32. */
class ImageFidelity(val minPsnrDb: Double?, val minSsim: Double?, val gateMinPsnrDb: Double, val gateMinSsim: Double)
