// A minimal stand-in for the parts of metal-cpp that MLX's Metal backend
// headers and the overlay's Metal host code use: declarations only, enough
// for `g++ -fsyntax-only`. Nothing here can run.
#pragma once

#include <cstddef>
#include <cstdint>

namespace NS {

using UInteger = unsigned long;
using Integer = long;

enum StringEncoding : UInteger { UTF8StringEncoding = 4 };

class Object {
 public:
  void release();
  Object* retain();
};

template <typename T>
class SharedPtr {
 public:
  SharedPtr();
  ~SharedPtr();
  SharedPtr(const SharedPtr&);
  SharedPtr(SharedPtr&&);
  SharedPtr& operator=(const SharedPtr&);
  SharedPtr& operator=(SharedPtr&&);
  T* get() const;
  T* operator->() const;
  explicit operator bool() const;
  void reset();
};

template <typename T>
SharedPtr<T> TransferPtr(T* p);
template <typename T>
SharedPtr<T> RetainPtr(T* p);

class String : public Object {
 public:
  static String* string(const char* s, StringEncoding encoding);
  const char* utf8String() const;
  static String* alloc();
  String* init(const char* s, StringEncoding encoding);
};

class Error : public Object {
 public:
  String* localizedDescription() const;
};

class AutoreleasePool : public Object {
 public:
  static AutoreleasePool* alloc();
  AutoreleasePool* init();
};

class Array : public Object {};
class Dictionary : public Object {};
class URL : public Object {};

} // namespace NS

namespace MTL {

struct Size {
  Size();
  Size(NS::UInteger width, NS::UInteger height, NS::UInteger depth);
  NS::UInteger width;
  NS::UInteger height;
  NS::UInteger depth;
};

enum DataType : NS::UInteger {
  DataTypeBool = 53,
  DataTypeInt = 29,
  DataTypeUInt = 33,
  DataTypeFloat = 3,
};

class Resource : public NS::Object {};
class Allocation : public NS::Object {};
class Buffer : public Resource {
 public:
  void* contents();
  NS::UInteger length() const;
};
class Fence : public NS::Object {};
class Function : public NS::Object {};
class FunctionConstantValues : public NS::Object {};
class LinkedFunctions : public NS::Object {};
class Library : public NS::Object {};
class ResidencySet : public NS::Object {};
class ResidencySetDescriptor : public NS::Object {};
class CommandQueue : public NS::Object {};
class CommandBuffer : public NS::Object {};
class Device : public NS::Object {};

class ComputePipelineState : public NS::Object {
 public:
  NS::UInteger maxTotalThreadsPerThreadgroup() const;
  NS::UInteger threadExecutionWidth() const;
};

class ComputeCommandEncoder : public NS::Object {
 public:
  void setComputePipelineState(const ComputePipelineState* state);
  void setBuffer(const Buffer* buffer, NS::UInteger offset, NS::UInteger index);
  void setBytes(const void* bytes, NS::UInteger length, NS::UInteger index);
  void dispatchThreads(Size threads, Size group);
  void dispatchThreadgroups(Size groups, Size group);
  void setThreadgroupMemoryLength(NS::UInteger length, NS::UInteger index);
  void endEncoding();
};

} // namespace MTL
