//! config.json / processor settings: HF defaults for absent keys, key-naming errors, presets,
//! and the fixture checkpoints' files.

use std::path::PathBuf;

use blip2_model::ModelError;
use blip2_model::config::{
    Blip2Config, CLIP_MEAN, CLIP_STD, ImageProcessorConfig, OptConfig, ProcessorConfig, T5Config,
    parse_feed_forward_proj,
};

fn parse(json: &str) -> Result<Blip2Config, ModelError> {
    Blip2Config::from_json_str(json, "test/config.json")
}

#[test]
fn empty_config_gets_hf_defaults() {
    let c = parse("{}").unwrap();
    let v = &c.vision_config;
    assert_eq!(
        (
            v.hidden_size,
            v.intermediate_size,
            v.num_hidden_layers,
            v.num_attention_heads
        ),
        (1408, 6144, 39, 16)
    );
    assert_eq!((v.image_size, v.patch_size, v.num_channels), (224, 14, 3));
    assert_eq!(
        v.layer_norm_eps, 1e-6,
        "vision LN eps default of transformers >= 4.32"
    );
    assert!(v.qkv_bias);
    assert_eq!(v.num_positions(), 257);
    let q = &c.qformer_config;
    assert_eq!(
        (
            q.hidden_size,
            q.num_hidden_layers,
            q.num_attention_heads,
            q.intermediate_size
        ),
        (768, 12, 12, 3072)
    );
    assert_eq!(q.layer_norm_eps, 1e-12);
    assert_eq!(q.cross_attention_frequency, 2);
    assert_eq!(q.encoder_hidden_size, 1408);
    assert!(!q.use_qformer_text_input);
    assert_eq!(c.num_query_tokens, 32);
    assert_eq!(c.image_text_hidden_size, 256);
    assert_eq!(c.image_token_index, None);
    assert!(c.text_config.is_none());
    assert!(!c.use_decoder_only_language_model);
}

#[test]
fn qformer_encoder_width_follows_vision() {
    let c = parse(r#"{"vision_config": {"hidden_size": 96, "num_attention_heads": 4}, "qformer_config": {"encoder_hidden_size": 5}}"#)
        .unwrap();
    assert_eq!(
        c.qformer_config.encoder_hidden_size, 96,
        "Blip2Config overwrites it with the vision width"
    );
}

#[test]
fn opt_defaults() {
    let c = parse(r#"{"text_config": {"model_type": "opt", "hidden_size": 64, "num_attention_heads": 4}, "image_token_id": 7}"#)
        .unwrap();
    let Some(o) = c
        .text_config
        .as_ref()
        .and_then(|t| t.downcast::<OptConfig>())
    else {
        panic!("expected OPT")
    };
    assert_eq!(o.word_embed_proj_dim, 64, "defaults to hidden_size");
    assert_eq!((o.bos_token_id, o.eos_token_id, o.pad_token_id), (2, 2, 1));
    assert!(o.do_layer_norm_before && o.enable_bias && o.tie_word_embeddings);
    assert_eq!(o.activation_function, "relu");
    assert_eq!(
        (o.ffn_dim, o.max_position_embeddings, o.vocab_size),
        (3072, 2048, 50272)
    );
    assert_eq!(o.layer_norm_eps, 1e-5);
    assert_eq!(c.image_token_index, Some(7), "image_token_id is an alias");
    assert!(c.use_decoder_only_language_model);
    // text_config without model_type is OPT, as in HF.
    let c = parse(r#"{"text_config": {"hidden_size": 32, "num_attention_heads": 2}}"#).unwrap();
    assert!(
        c.text_config
            .as_ref()
            .is_some_and(|t| t.downcast::<OptConfig>().is_some())
    );
}

#[test]
fn t5_activation_and_scaling_rules() {
    assert_eq!(
        parse_feed_forward_proj("relu").unwrap(),
        (false, "relu".into())
    );
    assert_eq!(
        parse_feed_forward_proj("gated-gelu").unwrap(),
        (true, "gelu_new".into())
    );
    assert_eq!(
        parse_feed_forward_proj("gated-silu").unwrap(),
        (true, "silu".into())
    );
    assert!(parse_feed_forward_proj("gelu-gated").is_err());
    assert!(parse_feed_forward_proj("gated-gelu-x").is_err());

    let t5 = |extra: &str| {
        let c = parse(&format!(
            r#"{{"text_config": {{"model_type": "t5"{extra}}}}}"#
        ))
        .unwrap();
        match c
            .text_config
            .as_ref()
            .and_then(|t| t.downcast::<T5Config>())
        {
            Some(t) => t.clone(),
            None => panic!("expected T5, got {:?}", c.text_config),
        }
    };
    let d = t5("");
    assert_eq!(
        (
            d.d_model,
            d.d_kv,
            d.d_ff,
            d.num_layers,
            d.num_decoder_layers,
            d.num_heads
        ),
        (512, 64, 2048, 6, 6, 8)
    );
    assert_eq!(
        (
            d.relative_attention_num_buckets,
            d.relative_attention_max_distance
        ),
        (32, 128)
    );
    assert_eq!(d.layer_norm_epsilon, 1e-6);
    assert_eq!((d.is_gated_act, d.dense_act_fn.as_str()), (false, "relu"));
    assert!(
        d.tie_word_embeddings && d.scale_decoder_outputs,
        "T5 default: tied and scaled"
    );
    assert_eq!(
        (
            d.eos_token_id,
            d.pad_token_id,
            d.decoder_start_token_id,
            d.bos_token_id
        ),
        (1, 0, 0, None)
    );

    let g = t5(r#", "feed_forward_proj": "gated-gelu", "num_layers": 3"#);
    assert_eq!(
        (g.is_gated_act, g.dense_act_fn.as_str()),
        (true, "gelu_new")
    );
    assert_eq!(g.num_decoder_layers, 3, "defaults to num_layers");
    // The BLIP-2 hub configs store dense_act_fn "gelu": exact GELU wins over the gelu_new rule.
    let hub = t5(
        r#", "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu", "tie_word_embeddings": false"#,
    );
    assert_eq!(
        (hub.is_gated_act, hub.dense_act_fn.as_str()),
        (true, "gelu")
    );
    assert!(
        !hub.scale_decoder_outputs,
        "v4 flan configs: untied -> no d_model^-0.5 scaling"
    );
    // v5 writes tie_word_embeddings true and the real answer in scale_decoder_outputs.
    let v5 = t5(r#", "tie_word_embeddings": true, "scale_decoder_outputs": false"#);
    assert!(!v5.scale_decoder_outputs);
}

#[test]
fn errors_name_file_and_key() {
    let err = parse(r#"{"vision_config": {"hidden_size": "big"}}"#).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("test/config.json") && msg.contains("vision_config.hidden_size"),
        "{msg}"
    );
    assert!(
        matches!(err, ModelError::Config { ref key, .. } if key == "vision_config.hidden_size")
    );

    let err =
        parse(r#"{"text_config": {"model_type": "t5", "feed_forward_proj": "gated-gelu-x"}}"#)
            .unwrap_err();
    assert!(
        err.to_string().contains("text_config.feed_forward_proj"),
        "{err}"
    );

    let err = parse(r#"{"text_config": {"model_type": "gpt_neox"}}"#).unwrap_err();
    assert!(
        err.to_string().contains("text_config.model_type") && err.to_string().contains("gpt_neox"),
        "{err}"
    );

    let err = parse(r#"{"qformer_config": {"cross_attention_frequency": 0}}"#).unwrap_err();
    assert!(
        err.to_string()
            .contains("qformer_config.cross_attention_frequency"),
        "{err}"
    );

    let err =
        parse(r#"{"vision_config": {"hidden_size": 100, "num_attention_heads": 16}}"#).unwrap_err();
    assert!(
        err.to_string()
            .contains("vision_config.num_attention_heads"),
        "{err}"
    );

    // T5's log-spaced position buckets need max_distance > num_buckets / 2 (else ln <= 0).
    let err = parse(
        r#"{"text_config": {"model_type": "t5", "relative_attention_num_buckets": 32,
            "relative_attention_max_distance": 16}}"#,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("text_config.relative_attention_max_distance"),
        "{err}"
    );
    let err = parse(r#"{"image_text_hidden_size": 0}"#).unwrap_err();
    assert!(err.to_string().contains("image_text_hidden_size"), "{err}");
    let err = parse(r#"{"text_config": {"model_type": "opt", "vocab_size": 0}}"#).unwrap_err();
    assert!(err.to_string().contains("text_config.vocab_size"), "{err}");

    let err = parse("{ not json").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("test/config.json: invalid JSON"),
        "{err}"
    );
    let err = parse("[1, 2]").unwrap_err();
    assert!(err.to_string().contains("top level"), "{err}");

    let err = Blip2Config::from_dir("/nonexistent/model").unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/model/config.json"),
        "{err}"
    );
}

#[test]
fn nulls_mean_defaults_and_lists_take_the_first_eos() {
    let c = parse(r#"{"image_token_index": null, "text_config": {"model_type": "opt", "eos_token_id": [50118, 2], "word_embed_proj_dim": null}}"#)
        .unwrap();
    let Some(o) = c
        .text_config
        .as_ref()
        .and_then(|t| t.downcast::<OptConfig>())
        .cloned()
    else {
        panic!()
    };
    assert_eq!(o.eos_token_id, 50118);
    assert_eq!(o.word_embed_proj_dim, o.hidden_size);
    assert_eq!(c.image_token_index, None);
}

#[test]
fn presets_have_hub_sizes() {
    let c = Blip2Config::preset("opt-2.7b").unwrap();
    let Some(o) = c
        .text_config
        .as_ref()
        .and_then(|t| t.downcast::<OptConfig>())
    else {
        panic!()
    };
    assert_eq!(
        (
            o.hidden_size,
            o.ffn_dim,
            o.num_hidden_layers,
            o.num_attention_heads,
            o.vocab_size
        ),
        (2560, 10240, 32, 32, 50304)
    );
    assert_eq!((o.eos_token_id, c.image_token_index), (50118, Some(50265)));
    let Some(o) = Blip2Config::preset("opt-6.7b")
        .unwrap()
        .text_config
        .and_then(|t| t.downcast::<OptConfig>().cloned())
    else {
        panic!()
    };
    assert_eq!((o.hidden_size, o.ffn_dim, o.head_dim()), (4096, 16384, 128));
    let c = Blip2Config::preset("flan-t5-xl").unwrap();
    let Some(t) = c
        .text_config
        .as_ref()
        .and_then(|t| t.downcast::<T5Config>())
    else {
        panic!()
    };
    assert_eq!(
        (
            t.d_model,
            t.d_ff,
            t.num_heads,
            t.num_layers,
            t.num_decoder_layers
        ),
        (2048, 5120, 32, 24, 24)
    );
    assert_eq!(
        (
            t.dense_act_fn.as_str(),
            t.is_gated_act,
            t.scale_decoder_outputs
        ),
        ("gelu", true, false)
    );
    assert_eq!(c.image_token_index, Some(32100));
    let Some(t) = Blip2Config::preset("flan-t5-xxl")
        .unwrap()
        .text_config
        .and_then(|t| t.downcast::<T5Config>().cloned())
    else {
        panic!()
    };
    assert_eq!((t.d_model, t.d_ff, t.num_heads), (4096, 10240, 64));
    let tiny = Blip2Config::preset("tiny").unwrap();
    assert_eq!(
        tiny.qformer_config.encoder_hidden_size,
        tiny.vision_config.hidden_size
    );
    let v = Blip2Config::preset("instructblip-vicuna-7b").unwrap();
    assert!(v.is_instructblip());
    assert_eq!(v.family(), "instructblip (vicuna/llama)");
    let l = v
        .text_config
        .as_ref()
        .and_then(|t| t.downcast::<blip2_model::lm::llama::LlamaConfig>())
        .unwrap();
    assert_eq!(
        (
            l.hidden_size,
            l.num_hidden_layers,
            l.num_key_value_heads,
            l.head_dim
        ),
        (4096, 32, 32, 128)
    );
    assert_eq!(v.image_token_index, Some(32000));
    assert_eq!(
        Blip2Config::preset("instructblip-flan-t5-xl")
            .unwrap()
            .family(),
        "instructblip (flan-t5)"
    );
    assert!(Blip2Config::preset("gpt-5").is_err());
}

#[test]
fn processor_layouts() {
    let v5 = r#"{"image_processor": {"size": {"height": 364, "width": 364}, "resample": 3, "image_std": [0.5, 0.5, 0.5]},
                 "num_query_tokens": 32}"#;
    let (img, n) = ProcessorConfig::from_processor_json(v5, "p/processor_config.json").unwrap();
    let img = img.unwrap();
    assert_eq!(
        (img.size, img.image_std, img.image_mean, n),
        ((364, 364), [0.5; 3], CLIP_MEAN, Some(32))
    );
    let (img, n) =
        ProcessorConfig::from_processor_json(r#"{"num_query_tokens": 8}"#, "p.json").unwrap();
    assert_eq!((img, n), (None, Some(8)));

    let old = r#"{"size": 224, "do_normalize": true, "rescale_factor": 0.00392156862745098}"#;
    let img = ImageProcessorConfig::from_preprocessor_json(old, "pre.json").unwrap();
    assert_eq!(img, ImageProcessorConfig::default());
    assert_eq!(img.image_std, CLIP_STD);

    let err =
        ImageProcessorConfig::from_preprocessor_json(r#"{"image_std": [1, 0, 1]}"#, "pre.json")
            .unwrap_err();
    assert!(
        err.to_string().contains("pre.json") && err.to_string().contains("image_std"),
        "{err}"
    );
    // Nearest (0) and unknown filters fail at load, naming the key.
    let err =
        ImageProcessorConfig::from_preprocessor_json(r#"{"resample": 0}"#, "pre.json").unwrap_err();
    assert!(
        err.to_string().contains("pre.json") && err.to_string().contains("resample"),
        "{err}"
    );
    let err = ImageProcessorConfig::from_preprocessor_json(r#"{"size": {"w": 3}}"#, "pre.json")
        .unwrap_err();
    assert!(err.to_string().contains("'size'"), "{err}");
    let err = ProcessorConfig::from_processor_json(
        r#"{"image_processor": {"do_resize": "yes"}}"#,
        "pc.json",
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("image_processor.do_resize"),
        "{err}"
    );

    // No processor files at all: BLIP-2 defaults.
    let p = ProcessorConfig::from_dir("/nonexistent").unwrap();
    assert_eq!(
        (p.image, p.num_query_tokens, p.source),
        (ImageProcessorConfig::default(), None, None)
    );
}

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models")
}

#[test]
fn fixture_configs() {
    let opt = Blip2Config::from_dir(models().join("blip2-opt-tiny")).unwrap();
    assert_eq!(
        (opt.num_query_tokens, opt.image_token_index),
        (8, Some(700))
    );
    let Some(o) = opt
        .text_config
        .as_ref()
        .and_then(|t| t.downcast::<OptConfig>())
    else {
        panic!("OPT fixture")
    };
    assert_eq!(
        (o.bos_token_id, o.eos_token_id, o.pad_token_id, o.vocab_size),
        (2, 202, 1, 768)
    );
    assert_eq!(
        opt.qformer_config.encoder_hidden_size,
        opt.vision_config.hidden_size
    );

    let t5 = Blip2Config::from_dir(models().join("blip2-flan-t5-tiny")).unwrap();
    let Some(t) = t5
        .text_config
        .as_ref()
        .and_then(|t| t.downcast::<T5Config>())
    else {
        panic!("T5 fixture")
    };
    assert_eq!(
        (
            t.is_gated_act,
            t.dense_act_fn.as_str(),
            t.scale_decoder_outputs
        ),
        (true, "gelu", false)
    );
    assert_eq!(
        (t.bos_token_id, t.eos_token_id, t.decoder_start_token_id),
        (Some(1), 1, 0)
    );
    assert_eq!(t5.image_token_index, Some(379));
    assert!(!t5.use_decoder_only_language_model);

    let itm = Blip2Config::from_dir(models().join("blip2-itm-tiny")).unwrap();
    assert!(itm.is_retrieval());
    assert!(itm.qformer_config.use_qformer_text_input);

    // v5 layout (processor_config.json) and the pre-v5 layout (preprocessor_config.json +
    // processor_config.json with only num_query_tokens) give the same settings.
    let new = ProcessorConfig::from_dir(models().join("blip2-opt-tiny")).unwrap();
    let old = ProcessorConfig::from_dir(models().join("blip2-opt-tiny-sharded")).unwrap();
    assert_eq!(new.image, old.image);
    assert_eq!(
        (new.num_query_tokens, old.num_query_tokens),
        (Some(8), Some(8))
    );
    assert!(new.source.unwrap().ends_with("processor_config.json"));
    assert!(old.source.unwrap().ends_with("preprocessor_config.json"));
    assert_eq!(new.image, ImageProcessorConfig::default());
}
