// The MobileGen sampler library as an Android library module (docs/android.md, "1. Add the module").
// Not built in this repository (no Android SDK here): tests/android/test_kotlin.py compiles the sources
// with kotlinc instead, all but LiteRtDenoiser.kt.
plugins {
    id("com.android.library")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "ai.mobilegen"
    compileSdk = 34
    defaultConfig { minSdk = 24 }
    sourceSets["main"].java.srcDirs("src/main/kotlin")
}

dependencies {
    implementation("com.google.ai.edge.litert:litert:1.0.1")
    implementation("com.google.ai.edge.litert:litert-gpu:1.0.1")
}
