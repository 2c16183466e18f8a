#version 330 core
// One draw renders several frames: the vertex buffer holds one copy of the face per frame
// ("tile"); each copy is moved down by its tile's height and clipped to its own band, so the
// frames come out stacked in one tall image.
//
// Grey-clay lighting, evaluated per vertex (Gouraud): a key light from the upper left, a
// softer fill from the right, a sky / ground ambient term darkened by baked occlusion, a faint
// highlight and a rim that separates the silhouette from the background. The mesh is dense
// enough that this looks the same as per-pixel lighting at clip sizes, and it costs the
// software rasteriser a fraction (docs/rendering.md). The camera looks down -z: view = +z.

layout(location = 0) in vec3 position;
layout(location = 1) in vec3 normal;      // unnormalised (blended normal deltas)
layout(location = 2) in vec2 texcoord_0;  // x: baked ambient occlusion
layout(location = 3) in vec4 color_0;     // rgb: albedo, a: 1 on skin (takes the face colour)

uniform mat4 P;               // orthographic, y flipped so rows come out top-down
uniform int verts_per_tile;
uniform float tile_height;    // world units between stacked frames
uniform vec2 tile_band;       // (bottom, top) of one frame in world y
uniform vec3 face_color;
uniform vec3 key_dir;         // unit vectors toward the lights
uniform vec3 fill_dir;
uniform vec3 key_color;
uniform vec3 fill_color;
uniform vec3 sky_color;
uniform vec3 ground_color;
uniform float spec_strength;
uniform float rim_strength;

out vec3 v_color;

void main()
{
    int tile = gl_VertexID / verts_per_tile;
    vec3 p = position;
    gl_ClipDistance[0] = tile_band.y - p.y;
    gl_ClipDistance[1] = p.y - tile_band.x;
    p.y -= float(tile) * tile_height;
    gl_Position = P * vec4(p, 1.0);

    vec3 albedo = color_0.rgb * mix(vec3(1.0), face_color, color_0.a);
    float ao = texcoord_0.x;
    vec3 n = normalize(normal);
    float key = max(dot(n, key_dir), 0.0);
    float fill = max(dot(n, fill_dir), 0.0);
    vec3 ambient = mix(ground_color, sky_color, 0.5 + 0.5 * n.y) * ao;
    vec3 h = normalize(key_dir + vec3(0.0, 0.0, 1.0));
    float spec = pow(max(dot(n, h), 0.0), 24.0) * spec_strength * ao;
    float rim = pow(1.0 - max(n.z, 0.0), 3.0) * rim_strength * ao;
    vec3 c = albedo * (ambient + key * key_color + fill * fill_color) + vec3(spec + rim);
    v_color = clamp(c, 0.0, 1.0);
}
