package ai.mobilegen

import org.json.JSONArray
import org.json.JSONException
import org.json.JSONObject
import org.json.JSONTokener

/** manifest.json is not an export this library can run. The message says what was wrong and what is allowed. */
class ManifestException(message: String) : Exception(message)

/** Memory order of the image tensors x and eps. TFLite exports are NHWC. */
enum class Layout { NCHW, NHWC }

/**
 * What the sampler needs from manifest.json, read with org.json (the JSON library Android ships).
 * Parsing refuses an export whose gates failed, an unknown schema_version, a missing field,
 * and an IO contract this library cannot drive (layout, shapes, image conversion).
 */
class Manifest private constructor(
    val batch: Int,
    val layout: Layout,
    val imageSize: Int,
    val channels: Int,
    val labels: List<String>,
    /** alpha_bar_t for t = 0..T-1, float64 as written by the exporter. */
    val alphasCumprod: DoubleArray,
    /** The default DDIM timesteps (sampler_defaults.timesteps), largest first. */
    val timesteps: IntArray,
    /** The default classifier-free guidance scale; 0 turns guidance off. */
    val guidance: Double,
    /** What the export measured on the phone paths (`--targets`); null for an export without them. [choosePath] reads it. */
    val targets: Targets?
) {
    /** T, the number of diffusion timesteps. */
    val T: Int get() = alphasCumprod.size

    /** Floats in one image (one batch row of x or eps). */
    val imageValues: Int get() = imageSize * imageSize * channels

    /** Channel of the value at [index] within one image, in this manifest's layout. */
    fun channelOf(index: Int): Int =
        if (layout == Layout.NHWC) index % channels else index / (imageSize * imageSize)

    /** Index of the label name (as in labels.txt); -1 is the unconditional pass. */
    fun labelIndex(name: String): Int {
        val i = labels.indexOf(name)
        if (i < 0) throw IllegalArgumentException("unknown label '$name'; expected one of ${labels.joinToString()}")
        return i
    }

    companion object {
        const val SCHEMA_VERSION = 1
        /** The only image conversion this library implements (sampler_defaults.image_from_x). */
        const val IMAGE_FROM_X = "uint8 = floor((clamp(x, -1, 1) + 1) / 2 * 255)"

        fun parse(text: String): Manifest {
            val root = try {
                StrictJson(text).document() as? JSONObject
                    ?: throw ManifestException("manifest.json is not a JSON object")
            } catch (e: JSONException) {
                throw ManifestException("manifest.json is not valid JSON: ${e.message}")
            }
            return fromJson(Node(root, ""))
        }

        private fun fromJson(root: Node): Manifest {
            val version = root.int("schema_version")
            if (version != SCHEMA_VERSION) {
                throw ManifestException("manifest.json has schema_version $version; this library reads schema_version " +
                    "$SCHEMA_VERSION (use a library and an export of the same MobileGen release)")
            }
            val status = root.string("status")
            if (status != "passed") {
                throw ManifestException("this export's status is '$status': it failed its parity gates and must not " +
                    "ship; only status 'passed' is accepted (see report.md in the export folder)")
            }
            val io = root.obj("io")
            val layoutName = io.string("layout")
            val layout = Layout.values().firstOrNull { it.name == layoutName }
                ?: throw ManifestException("io.layout is '$layoutName'; expected NCHW or NHWC")
            val batch = io.int("batch")
            val size = io.int("image_size")
            val channels = io.int("channels")
            if (batch < 1 || size < 1 || channels < 1) {
                throw ManifestException("io.batch, io.image_size and io.channels must be >= 1, got $batch, $size, $channels")
            }
            val expected = if (layout == Layout.NHWC) listOf(batch, size, size, channels) else listOf(batch, channels, size, size)
            for (group in listOf("inputs", "outputs")) {
                val tensors = io.array(group)
                for (i in 0 until tensors.length) {
                    val tensor = tensors.obj(i)
                    val name = tensor.string("name")
                    if (name != "x" && name != "eps") continue
                    val shape = tensor.array("shape").ints()
                    if (shape != expected) {
                        throw ManifestException("io.$group: $name has shape $shape, but io.layout $layout with batch " +
                            "$batch needs $expected")
                    }
                }
            }
            val labels = root.array("labels").strings()
            val classes = io.int("num_classes")
            if (labels.size != classes) {
                throw ManifestException("labels has ${labels.size} names but io.num_classes is $classes")
            }
            val abar = root.obj("schedule").array("alphas_cumprod").doubles()
            if (abar.isEmpty() || abar.any { !(it > 0.0 && it <= 1.0) }) {
                throw ManifestException("schedule.alphas_cumprod must be T values in (0, 1]")
            }
            val defaults = root.obj("sampler_defaults")
            val timesteps = defaults.array("timesteps").ints().toIntArray()
            if (timesteps.isEmpty() || timesteps.any { it < 0 || it >= abar.size }) {
                throw ManifestException("sampler_defaults.timesteps must be indices in 0..${abar.size - 1}")
            }
            val rule = defaults.string("image_from_x")
            if (rule != IMAGE_FROM_X) {
                throw ManifestException("sampler_defaults.image_from_x is '$rule'; this library implements '$IMAGE_FROM_X'")
            }
            val targets = if (root.has("targets")) Targets.parse(root.obj("targets")) else null
            return Manifest(batch, layout, size, channels, labels, abar, timesteps, defaults.double("guidance"), targets)
        }
    }

    /** A JSON object or array with its path in the manifest, for error messages. */
    internal class Node(private val value: Any, private val path: String) {
        private fun at(key: String) = if (path == "") key else "$path.$key"

        private fun get(key: String): Any {
            val o = value as JSONObject
            if (!o.has(key) || o.isNull(key)) throw ManifestException("manifest.json: missing field '${at(key)}'")
            return o.get(key)
        }

        fun wrong(key: String, what: String): Nothing =
            throw ManifestException("manifest.json: field '${at(key)}' is not $what")

        /** The key is there and not null (an optional section). */
        fun has(key: String) = !(value as JSONObject).isNull(key)
        val keys: List<String> get() = (value as JSONObject).keys().asSequence().toList()

        fun obj(key: String) = Node(get(key) as? JSONObject ?: wrong(key, "an object"), at(key))
        fun array(key: String) = Node(get(key) as? JSONArray ?: wrong(key, "an array"), at(key))
        fun string(key: String) = get(key) as? String ?: wrong(key, "a string")
        fun double(key: String) = (get(key) as? Number ?: wrong(key, "a number")).toDouble()
        fun boolean(key: String) = get(key) as? Boolean ?: wrong(key, "true or false")
        /** A number or null (a PSNR that was not finite); the key itself must be there. */
        fun doubleOrNull(key: String): Double? {
            if (!(value as JSONObject).has(key)) throw ManifestException("manifest.json: missing field '${at(key)}'")
            return if (value.isNull(key)) null else double(key)
        }
        fun int(key: String): Int {
            val n = get(key) as? Number ?: wrong(key, "an integer")
            if (n.toDouble() != n.toInt().toDouble()) wrong(key, "an integer")
            return n.toInt()
        }

        val length: Int get() = (value as JSONArray).length()
        fun obj(i: Int) = Node((value as JSONArray).opt(i) as? JSONObject ?: wrong("[$i]", "an object"), "$path[$i]")
        fun ints() = (0 until length).map {
            val n = (value as JSONArray).opt(it) as? Number
            if (n == null || n.toDouble() != n.toInt().toDouble()) wrong("[$it]", "an integer")
            n.toInt()
        }
        fun doubles() = DoubleArray(length) { ((value as JSONArray).opt(it) as? Number ?: wrong("[$it]", "a number")).toDouble() }
        fun strings() = (0 until length).map { (value as JSONArray).opt(it) as? String ?: wrong("[$it]", "a string") }
    }
}

/**
 * JSON read with org.json's tokenizer, refusing a key repeated in one object. org.json keeps the
 * last value of a repeated key, other parsers the first: a manifest must have one reading, so
 * the exporter's checker (Python) and this library both refuse it.
 */
internal class StrictJson(text: String) {
    private val tokens = JSONTokener(text)

    fun document(): Any {
        val value = value("")
        if (tokens.nextClean() != 0.toChar()) throw tokens.syntaxError("text after the JSON value")
        return value
    }

    private fun value(path: String): Any = when (tokens.nextClean()) {
        '{' -> obj(path)
        '[' -> array(path)
        else -> { tokens.back(); tokens.nextValue() }
    }

    private fun obj(path: String): JSONObject {
        val out = JSONObject()
        if (tokens.nextClean() == '}') return out
        tokens.back()
        while (true) {
            val key = tokens.nextValue() as? String ?: throw tokens.syntaxError("object keys must be strings")
            val at = if (path == "") key else "$path.$key"
            if (out.has(key)) throw ManifestException("manifest.json: key '$at' appears twice; a manifest must have one reading")
            if (tokens.nextClean() != ':') throw tokens.syntaxError("expected ':' after key '$at'")
            out.put(key, value(at))
            val next = tokens.nextClean()
            if (next == '}') return out
            if (next != ',') throw tokens.syntaxError("expected ',' or '}' in '$path'")
        }
    }

    private fun array(path: String): JSONArray {
        val out = JSONArray()
        if (tokens.nextClean() == ']') return out
        tokens.back()
        while (true) {
            out.put(value("$path[${out.length()}]"))
            val next = tokens.nextClean()
            if (next == ']') return out
            if (next != ',') throw tokens.syntaxError("expected ',' or ']' in '$path'")
        }
    }
}
